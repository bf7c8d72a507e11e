//! What a client asks to create, checked before Docker sees it, and the Docker container it
//! becomes: the client's image, environment, volumes and ports, plus the socket mount and the
//! labels that make it a Flow Manager container.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, PortBinding};

use super::{LABEL_DIALECT, LABEL_SOCKET, SOCKET_TARGET};
use crate::core::{CoreError, CoreResult};

/// A container to create.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub image: String,
    /// Docker's name rule; a name is generated when none is given.
    pub name: Option<String>,
    pub environment: Vec<(String, String)>,
    /// Host path, then the path in the container.
    pub volumes: Vec<(String, String)>,
    /// Container port (`8080`, `8080/udp`), then the host port (0: Docker picks one).
    pub ports: Vec<(String, u16)>,
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub healthcheck: Option<HealthCheck>,
}

/// Docker's health check of a container (an addition to the document's request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthCheck {
    /// Docker's form: `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

fn invalid<T>(message: impl Into<String>) -> CoreResult<T> {
    Err(CoreError::Invalid(message.into()))
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, here at most 64 characters
/// (the name also names the socket file).
pub fn check_name(name: &str) -> CoreResult<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.len() < 2 || name.len() > 64 || !first_ok || !rest_ok {
        return invalid(format!(
            "invalid container name \"{name}\": 2 to 64 characters, letters, digits, '_', '.' \
             and '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn check_path(what: &str, p: &str) -> CoreResult<()> {
    if !p.starts_with('/') || p.contains([':', ',', '\0']) {
        return invalid(format!(
            "{what} \"{p}\" must be an absolute path without ':' or ','"
        ));
    }
    Ok(())
}

/// `8080` or `8080/tcp|udp|sctp` -> Docker's `8080/tcp`.
pub fn port_key(key: &str) -> CoreResult<String> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let ok_port = port.parse::<u16>().is_ok_and(|p| p > 0);
    if !ok_port || !matches!(proto, "tcp" | "udp" | "sctp") {
        return invalid(format!(
            "invalid container port \"{key}\": a number 1-65535, optionally /tcp, /udp or /sctp"
        ));
    }
    Ok(format!("{port}/{proto}"))
}

impl ContainerSpec {
    /// Refuses what Docker would refuse or misread, naming the field.
    pub fn check(&self) -> CoreResult<()> {
        let image = self.image.trim();
        if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("image must be a non-empty image reference");
        }
        if let Some(n) = &self.name {
            check_name(n)?;
        }
        for (k, v) in &self.environment {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return invalid(format!("invalid environment variable \"{k}\""));
            }
        }
        for (host, target) in &self.volumes {
            check_path("volume host path", host)?;
            check_path("volume container path", target)?;
            if target == SOCKET_TARGET || target == super::CODE_TARGET {
                return invalid(format!("volume container path {target} is reserved"));
            }
        }
        for (key, _) in &self.ports {
            port_key(key)?;
        }
        if let Some(h) = &self.healthcheck {
            if !matches!(
                h.test.first().map(String::as_str),
                Some("CMD" | "CMD-SHELL" | "NONE")
            ) {
                return invalid("healthcheck.test must start with CMD, CMD-SHELL or NONE");
            }
        }
        Ok(())
    }

    /// The Docker container: the socket at `socket` is mounted at the container's
    /// [`SOCKET_TARGET`].
    pub fn create_body(&self, socket: &Path) -> ContainerCreateBody {
        let env = self.environment.iter().map(|(k, v)| format!("{k}={v}"));
        let mut binds: Vec<String> = self
            .volumes
            .iter()
            .map(|(h, t)| format!("{h}:{t}"))
            .collect();
        binds.push(format!("{}:{SOCKET_TARGET}", socket.display()));
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for (key, host) in &self.ports {
            let binding = PortBinding {
                host_ip: None,
                host_port: Some(if *host == 0 {
                    String::new()
                } else {
                    host.to_string()
                }),
            };
            let key = port_key(key).unwrap_or_else(|_| key.clone());
            bindings
                .entry(key)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(binding);
        }
        let labels = HashMap::from([
            (LABEL_DIALECT.to_string(), super::DIALECT.to_string()),
            (LABEL_SOCKET.to_string(), socket.display().to_string()),
        ]);
        ContainerCreateBody {
            image: Some(self.image.trim().to_string()),
            env: Some(env.collect()),
            cmd: self.command.clone(),
            working_dir: self.working_dir.clone(),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            labels: Some(labels),
            healthcheck: self.healthcheck.as_ref().map(health_config),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings: Some(bindings),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn health_config(h: &HealthCheck) -> HealthConfig {
    HealthConfig {
        test: Some(h.test.clone()),
        interval: nanos(h.interval),
        timeout: nanos(h.timeout),
        retries: h.retries.map(i64::from),
        start_period: nanos(h.start_period),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            image: "flow:latest".into(),
            name: Some("my-flow".into()),
            environment: vec![("A".into(), "1".into())],
            volumes: vec![("/srv/data".into(), "/data".into())],
            ports: vec![("8080".into(), 18080)],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_spec_becomes_a_labelled_container_with_its_socket() {
        let s = spec();
        s.check().unwrap();
        let b = s.create_body(Path::new("/tmp/k/my-flow.sock"));
        assert_eq!(b.image.as_deref(), Some("flow:latest"));
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_DIALECT], "flowmanager");
        assert_eq!(labels[LABEL_SOCKET], "/tmp/k/my-flow.sock");
        let hc = b.host_config.unwrap();
        let binds = hc.binds.unwrap();
        assert!(binds.contains(&"/srv/data:/data".to_string()));
        assert!(binds.contains(&"/tmp/k/my-flow.sock:/var/run/kawaflow.sock".to_string()));
        let pb = hc.port_bindings.unwrap();
        assert_eq!(
            pb["8080/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("18080")
        );
        assert_eq!(b.exposed_ports, Some(vec!["8080/tcp".to_string()]));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let cases: Vec<(ContainerSpec, &str)> = vec![
            (
                ContainerSpec {
                    image: " ".into(),
                    ..spec()
                },
                "image",
            ),
            (
                ContainerSpec {
                    name: Some("-x".into()),
                    ..spec()
                },
                "name",
            ),
            (
                ContainerSpec {
                    name: Some("a/b".into()),
                    ..spec()
                },
                "name",
            ),
            (
                ContainerSpec {
                    environment: vec![("A=B".into(), "1".into())],
                    ..spec()
                },
                "environment",
            ),
            (
                ContainerSpec {
                    volumes: vec![("rel".into(), "/x".into())],
                    ..spec()
                },
                "volume host path",
            ),
            (
                ContainerSpec {
                    volumes: vec![("/x".into(), "/var/run/kawaflow.sock".into())],
                    ..spec()
                },
                "reserved",
            ),
            (
                ContainerSpec {
                    ports: vec![("http".into(), 1)],
                    ..spec()
                },
                "container port",
            ),
            (
                ContainerSpec {
                    ports: vec![("80/icmp".into(), 1)],
                    ..spec()
                },
                "container port",
            ),
        ];
        for (s, what) in cases {
            let e = s.check().unwrap_err();
            assert!(e.is(crate::core::ErrorKind::Invalid));
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        assert_eq!(port_key("53/udp").unwrap(), "53/udp");
    }
}
