//! `[pool]`: the App Pool role. A store (an OCI registry holding app bundles) and the servers
//! (other gantrys) this pool deploys to, with the bounds of its outbound work. Parsed in every
//! build; only a build with the `pool` feature acts on it.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use super::{bad, ConfigError, Env};

/// The App Pool's configuration.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The store from the config file; `PUT /configure` may set another at run time.
    pub store: Option<StoreConfig>,
    /// Servers from the config file (more come through `POST /servers`).
    pub servers: Vec<ServerConfig>,
    /// How often every server's `GET /api/versions` is asked.
    pub probe_interval: Duration,
    /// Outbound operations (downloads, deployments, probes) running at once.
    pub max_parallel: usize,
    pub connect_timeout: Duration,
    /// Bound of each short outbound call (probes, starts, stops, listings).
    pub request_timeout: Duration,
    /// A transfer (download, deployment) that moves no byte for this long fails.
    pub idle_timeout: Duration,
    /// How long a download keeps retrying a store that does not answer.
    pub download_retry: Duration,
    /// Where the token files of servers added through the API must be (`POST /servers`
    /// names a file in it), so that an API client cannot have the pool send any file it can
    /// read as a bearer token.
    pub token_dir: PathBuf,
    /// Trust roots for the store's TLS besides the system's (`ca_file`: a private CA), for
    /// whichever store is in effect.
    pub ca: Vec<CertificateDer<'static>>,
}

/// The OCI registry the pool's apps come from: `registry` is `http://host:port` or
/// `https://host[:port]`; repositories live below `namespace`
/// (`gantry-apps/simple-webserver`); `credentials` are the username and the password read
/// from `password_file` at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub registry: String,
    pub namespace: String,
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    registry: Option<String>,
    namespace: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default)]
    servers: Vec<RawServer>,
    probe_interval_secs: Option<u64>,
    max_parallel: Option<usize>,
    connect_timeout_secs: Option<u64>,
    request_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    download_retry_secs: Option<u64>,
    token_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    token_file: Option<PathBuf>,
}

/// A server: its Transfer base `url`, before `/api` (`http://198.18.1.2:54169`), and the
/// file holding its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub url: String,
    pub token_file: Option<PathBuf>,
}

/// `pool.<key>` in seconds: `GANTRY_POOL_<KEY>` wins over the file; at least 1.
fn secs(
    env: &dyn Env,
    key: &str,
    file: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let var = format!("GANTRY_POOL_{}", key.to_uppercase());
    super::secs_value(env, &format!("pool.{key}"), var, file.unwrap_or(default))
}

pub(super) fn build(raw: RawPool, env: &dyn Env) -> Result<PoolConfig, ConfigError> {
    let servers = raw
        .servers
        .into_iter()
        .map(|s| {
            Ok(ServerConfig {
                url: server_url(&s.url)?,
                token_file: s.token_file,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let store = match env.var("GANTRY_POOL_REGISTRY").or(raw.registry) {
        None => None,
        Some(registry) => Some(store(
            registry,
            raw.namespace,
            raw.username,
            raw.password_file,
        )?),
    };
    let max_parallel = raw.max_parallel.unwrap_or(4);
    if max_parallel == 0 {
        return Err(bad("pool.max_parallel", "must be at least 1"));
    }
    let token_dir = raw
        .token_dir
        .unwrap_or_else(|| PathBuf::from("/etc/gantry/servers"));
    if !token_dir.is_absolute() {
        return Err(bad("pool.token_dir", "must be an absolute path"));
    }
    let ca = match &raw.ca_file {
        None => Vec::new(),
        Some(path) => {
            crate::server::tls::ca_certificates(path).map_err(|m| bad("pool.ca_file", m))?
        }
    };
    Ok(PoolConfig {
        store,
        servers,
        probe_interval: secs(env, "probe_interval_secs", raw.probe_interval_secs, 10)?,
        max_parallel,
        connect_timeout: secs(env, "connect_timeout_secs", raw.connect_timeout_secs, 5)?,
        request_timeout: secs(env, "request_timeout_secs", raw.request_timeout_secs, 60)?,
        idle_timeout: secs(env, "idle_timeout_secs", raw.idle_timeout_secs, 60)?,
        download_retry: secs(env, "download_retry_secs", raw.download_retry_secs, 600)?,
        token_dir,
        ca,
    })
}

fn store(
    registry: String,
    namespace: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<StoreConfig, ConfigError> {
    let registry = registry_url(&registry).map_err(|m| bad("pool.registry", m))?;
    let namespace = namespace.unwrap_or_else(|| "gantry-apps".into());
    if !valid_namespace(&namespace) {
        return Err(bad(
            "pool.namespace",
            format!("\"{namespace}\": lowercase path components of a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    let credentials = match (username, &password_file) {
        (None, None) => None,
        (Some(user), Some(path)) => Some((
            user,
            std::fs::read_to_string(path)
                .map_err(|e| bad("pool.password_file", format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
        )),
        _ => {
            return Err(bad(
                "pool.username",
                "username and password_file go together",
            ))
        }
    };
    Ok(StoreConfig {
        registry,
        namespace,
        credentials,
    })
}

/// `http://host[:port]` or `https://host[:port]`, without a path (a trailing `/` is dropped).
pub fn registry_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("\"{url}\" must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err(format!(
            "\"{url}\" must be a scheme and host[:port], nothing more"
        ));
    }
    Ok(url.to_string())
}

/// A server's Transfer base URL: `http(s)://host:port[/prefix]`, without a trailing `/`
/// and without `/api[/{version}]` (given, it is dropped).
pub fn server_url(url: &str) -> Result<String, ConfigError> {
    let mut u = url.trim().trim_end_matches('/').to_string();
    for suffix in ["/api/1.0", "/api/1", "/api"] {
        if let Some(base) = u.strip_suffix(suffix) {
            u = base.to_string();
            break;
        }
    }
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .unwrap_or("");
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || u.contains(['?', '#', ' ', '@']) {
        return Err(bad(
            "pool.servers.url",
            format!("\"{url}\" is not an http:// or https:// URL of a gantry's Transfer API"),
        ));
    }
    Ok(u)
}

/// A namespace: lowercase path components of `[a-z0-9._-]` that start and end with a letter
/// or digit, no leading or trailing `/`; "" is none.
pub fn valid_namespace(ns: &str) -> bool {
    ns.is_empty()
        || ns.split('/').all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphanumeric())
                && part.ends_with(|c: char| c.is_ascii_alphanumeric())
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::super::NoEnv;
    use super::*;

    fn parse(text: &str) -> Result<PoolConfig, ConfigError> {
        build(toml::from_str(text).unwrap(), &NoEnv)
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse("").unwrap();
        assert!(c.store.is_none() && c.servers.is_empty());
        assert_eq!((c.max_parallel, c.probe_interval.as_secs()), (4, 10));
        assert_eq!(c.token_dir, PathBuf::from("/etc/gantry/servers"));
        let c = parse(
            "registry = \"http://127.0.0.1:5000/\"\nnamespace = \"fleet/apps\"\n\
             [[servers]]\nurl = \"http://198.18.1.2:54169/api/1\"\ntoken_file = \"/t\"\n",
        )
        .unwrap();
        let store = c.store.unwrap();
        assert_eq!(store.registry, "http://127.0.0.1:5000");
        assert_eq!(store.namespace, "fleet/apps");
        assert_eq!(c.servers[0].url, "http://198.18.1.2:54169");
        assert!(valid_namespace("gantry/apps") && valid_namespace(""));
        for bad in ["Gantry", "/a", "a/", "a//b", "-a", "a b"] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("registry = \"ftp://x\"", "pool.registry"),
            ("registry = \"http://x/path\"", "pool.registry"),
            (
                "registry = \"http://x\"\nnamespace = \"Apps\"",
                "pool.namespace",
            ),
            ("registry = \"http://x\"\nusername = \"u\"", "pool.username"),
            ("max_parallel = 0", "pool.max_parallel"),
            ("idle_timeout_secs = 0", "pool.idle_timeout_secs"),
            ("[[servers]]\nurl = \"x\"", "pool.servers.url"),
            ("token_dir = \"tokens\"", "pool.token_dir"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Value { key: k, .. } if k == key),
                "{text}: {e}"
            );
        }
    }

    /// A self-signed CA certificate (a fixture: only its form is read, not its dates).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBhzCCAS2gAwIBAgIUediS63JESVe7MwjBmmLFptrcsk8wCgYIKoZIzj0EAwIw\n\
GTEXMBUGA1UEAwwOZ2FudHJ5LXRlc3QtY2EwHhcNMjYxMjAzMTYwMzIyWhcNMjYx\n\
MjA0MTYwMzIyWjAZMRcwFQYDVQQDDA5nYW50cnktdGVzdC1jYTBZMBMGByqGSM49\n\
AgEGCCqGSM49AwEHA0IABJaLJ6pf77wtI3MbZYMakTyU0K3OHbWEBsL6W3Hn98Ob\n\
dvUsheliI1M2Zsi5DGvU3HFy9BXseGD5tpdfjpDR68ajUzBRMB0GA1UdDgQWBBQY\n\
FPIpHEU5TKs7nAJaSctKcdkpfjAfBgNVHSMEGDAWgBQYFPIpHEU5TKs7nAJaSctK\n\
cdkpfjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCDeVBhPy5l\n\
6fBT8cFju8CyoYr7mp8WvkTcJUZeDt9V6QIgTfpyZ6g/ML+XC1Tq+nx91HidfHmy\n\
ATG/tV9KGhwJuc8=\n\
-----END CERTIFICATE-----\n";

    #[test]
    fn a_ca_file_holds_usable_certificates_or_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let one = file("one.pem", CA_PEM);
        let two = file("two.pem", &format!("{CA_PEM}{CA_PEM}"));
        for (path, n) in [(&one, 1), (&two, 2)] {
            let c = parse(&format!("ca_file = {path:?}")).unwrap();
            assert_eq!(c.ca.len(), n, "{path}");
        }
        assert!(parse("").unwrap().ca.is_empty());
        let missing = dir.path().join("missing.pem").display().to_string();
        let not_a_file = dir.path().display().to_string();
        let no_pem = file("text.pem", "not a certificate\n");
        let bad_der = file(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        for path in [&missing, &not_a_file, &no_pem, &bad_der] {
            let e = parse(&format!("ca_file = {path:?}")).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Value { key, message } if key == "pool.ca_file" && message.contains(path.as_str())),
                "{path}: {e}"
            );
        }
    }
}
