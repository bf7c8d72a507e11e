//! What a service is: the core's description of one ([`ServiceSpec`], checked before anything
//! is created) and the record kept beside it ([`StoredService`]: Docker's create body and the
//! service's environment), from which its container can be created again.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, PortMap};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::core::{CoreError, CoreResult};

/// Label on every service's container: the dialect that created it.
pub const LABEL_DIALECT: &str = "io.gantry.dialect";
/// Label on every service's container: the service id.
pub const LABEL_SERVICE: &str = "io.gantry.duxcore.service";
pub const DIALECT: &str = "duxcore";

/// A service to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSpec {
    /// The client's id; also the container's name.
    pub id: String,
    pub image: String,
    /// Where the service's host directory appears inside the container.
    pub bind_dir: String,
    /// An http URL of a .tar.gz unpacked into the host directory before the first start.
    pub bind_contents: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub shell: Option<Vec<String>>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub env: IndexMap<String, String>,
    pub open_stdin: bool,
    pub tty: bool,
    pub hostname: Option<String>,
    pub port_map: Option<PortMap>,
    pub network_disabled: Option<bool>,
    /// CPU time per period, in microseconds (Docker's CpuQuota).
    pub max_cpu: Option<u64>,
    /// Memory limit in bytes.
    pub max_ram: Option<u64>,
}

/// The record of a service in its directory: enough to create its container again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredService {
    pub id: String,
    /// Docker's create body, without the environment.
    pub body: ContainerCreateBody,
    /// The service's own environment variables, in the order given.
    pub env: IndexMap<String, String>,
}

impl StoredService {
    /// The create body with the environment as Docker takes it (`KEY=value`, verbatim).
    pub fn create_body(&self) -> ContainerCreateBody {
        let mut body = self.body.clone();
        body.env = Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        body
    }
}

/// Whether `id` can name a service: Docker's container name rule (a letter or digit, then
/// letters, digits, `_`, `.` and `-`; at least two characters), at most 128 characters.
pub fn check_id(id: &str) -> CoreResult<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if id.len() < 2 || id.len() > 128 || !first_ok || !rest_ok {
        return Err(CoreError::Invalid(format!(
            "\"{id}\" cannot name a service: use 2 to 128 letters, digits, '_', '.' or '-', \
             starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Refuses environment variables Docker cannot carry: an empty name, a name with `=`, a NUL.
pub fn check_env(env: &IndexMap<String, String>) -> CoreResult<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(CoreError::Invalid(format!(
                "environment variable name {k:?} is not allowed: it must be non-empty, without \
                 '=' or NUL"
            )));
        }
        if v.contains('\0') {
            return Err(CoreError::Invalid(format!(
                "the value of environment variable {k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

fn limit(name: &str, v: Option<u64>) -> CoreResult<Option<i64>> {
    v.map(|n| i64::try_from(n).map_err(|_| CoreError::Invalid(format!("{name} {n} is too large"))))
        .transpose()
}

impl ServiceSpec {
    /// Checks what Docker would only refuse later, or could misread.
    pub fn check(&self) -> CoreResult<()> {
        check_id(&self.id)?;
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(CoreError::Invalid(format!(
                "image {:?} is not an image reference",
                self.image
            )));
        }
        if self.bind_target().is_none() {
            return Err(CoreError::Invalid(format!(
                "bind_dir {:?} must name a directory in the container other than /",
                self.bind_dir
            )));
        }
        check_env(&self.env)?;
        limit("max_cpu", self.max_cpu)?;
        limit("max_ram", self.max_ram)?;
        Ok(())
    }

    /// `bind_dir` as an absolute path in the container (the original daemon prefixes `/`).
    fn bind_target(&self) -> Option<String> {
        let rel = self.bind_dir.trim_start_matches('/');
        (!rel.is_empty() && !rel.contains('\0')).then(|| format!("/{rel}"))
    }

    /// The record of this service, its host directory at `bind_source`.
    pub fn stored(&self, bind_source: &Path) -> CoreResult<StoredService> {
        let labels = HashMap::from([
            (LABEL_DIALECT.to_string(), DIALECT.to_string()),
            (LABEL_SERVICE.to_string(), self.id.clone()),
        ]);
        let mount = Mount {
            target: self.bind_target(),
            source: Some(bind_source.display().to_string()),
            typ: Some(MountType::BIND),
            ..Default::default()
        };
        let host_config = HostConfig {
            memory: limit("max_ram", self.max_ram)?,
            cpu_quota: limit("max_cpu", self.max_cpu)?,
            mounts: Some(vec![mount]),
            port_bindings: self.port_map.clone(),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.cmd.clone(),
            shell: self.shell.clone(),
            user: self.user.clone(),
            working_dir: self.working_dir.clone(),
            open_stdin: Some(self.open_stdin),
            stdin_once: Some(false),
            tty: Some(self.tty),
            hostname: self.hostname.clone(),
            network_disabled: self.network_disabled,
            exposed_ports: self.port_map.as_ref().map(|m| m.keys().cloned().collect()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        Ok(StoredService {
            id: self.id.clone(),
            body,
            env: self.env.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::PortBinding;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            id: "web-1".into(),
            image: "busybox".into(),
            bind_dir: "data".into(),
            open_stdin: true,
            tty: true,
            ..Default::default()
        }
    }

    #[test]
    fn ids_follow_dockers_name_rule() {
        for ok in ["ab", "Web_1.x-2", "0a"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a", "-a", ".a", "a/b", "..", "a b", "ä1", long.as_str()] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_carries_every_param_and_the_env_verbatim() {
        let mut s = spec();
        s.cmd = Some(vec!["sh".into()]);
        s.max_ram = Some(64 << 20);
        s.max_cpu = Some(50_000);
        s.port_map = Some(HashMap::from([(
            "80/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("8080".into()),
            }]),
        )]));
        s.env.insert("A".into(), "x = \"y\"\nz".into());
        s.check().unwrap();
        let stored = s.stored(Path::new("/state/web-1/bind")).unwrap();
        let body = stored.create_body();
        assert_eq!(body.env.unwrap(), vec!["A=x = \"y\"\nz".to_string()]);
        assert_eq!(body.exposed_ports.unwrap(), vec!["80/tcp".to_string()]);
        let hc = body.host_config.unwrap();
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.cpu_quota, Some(50_000));
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(m.target.as_deref(), Some("/data"));
        assert_eq!(m.source.as_deref(), Some("/state/web-1/bind"));
        assert_eq!(body.labels.unwrap()[LABEL_SERVICE], "web-1");
        // The record survives a round trip through JSON.
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            serde_json::from_str::<StoredService>(&text).unwrap(),
            stored
        );
    }

    #[test]
    fn refuses_what_docker_cannot_take() {
        let mut s = spec();
        s.bind_dir = "/".into();
        assert!(s.check().is_err());
        let mut s = spec();
        s.image = "a b".into();
        assert!(s.check().is_err());
        let mut s = spec();
        s.max_ram = Some(u64::MAX);
        assert!(s.check().is_err());
        for k in ["", "A=B", "A\0"] {
            let mut s = spec();
            s.env.insert(k.into(), "v".into());
            assert!(s.check().is_err(), "{k:?}");
        }
    }
}
