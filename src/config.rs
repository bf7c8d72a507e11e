//! Daemon configuration: a TOML file where every key is optional, then environment overrides.
//!
//! Validation happens here, before anything binds or connects, so that a broken config exits
//! with [`crate::EXIT_BAD_CONFIG`] and systemd does not restart-loop on it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod distillery;
pub use distillery::{read_tokens, NamedToken, SnapshotsConfig};
pub mod pool;
pub use pool::{PoolConfig, ServerConfig, StoreConfig};
mod security;
#[cfg(test)]
pub use security::Cidr;
pub use security::{Access, TlsFiles};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/gantry/gantry.toml";
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Websocket sessions per listener when `http.max_websocket_sessions` is not set.
pub const DEFAULT_MAX_WEBSOCKET_SESSIONS: usize = 64;

/// Why a configuration cannot be used; each kind of mistake is its own variant, so that a
/// caller (and a test) can tell which it got.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, a value of the wrong type, or a key gantry does not know.
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// A value that is malformed or out of range; `key` names it as the file spells it.
    #[error("{key}: {message}")]
    Value { key: String, message: String },
    /// An environment override that cannot be used.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    #[error(
        "unknown dialect \"{0}\" (known: transfer, intervirt, flowmanager, duxcore, distillery)"
    )]
    UnknownDialect(String),
    /// A listener anyone on the network could use without credentials.
    #[error(
        "{0} is not a loopback address and no auth is set: set auth = \"token\" with a \
         token_file, or auth = \"none\" to serve it without authentication"
    )]
    NoAuth(SocketAddr),
    #[error("token_file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The duxcore core key file cannot be read (or is empty).
    #[error("duxcore.corekey_file {}: {source}", path.display())]
    CoreKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("two listeners on {0}")]
    DuplicateAddress(SocketAddr),
    /// A real power backend while the test guard variable is set.
    #[error(
        "intervirt.power = \"{0}\" is refused while {FORBID_POWER_ENV} is set (test runs must \
         use \"record\" or \"none\")"
    )]
    PowerForbidden(String),
    /// An error in one `[[listeners]]` table.
    #[error("listeners[{index}]: {source}")]
    Listener {
        index: usize,
        #[source]
        source: Box<ConfigError>,
    },
    /// An error in the file (or defaults) named by `origin`.
    #[error("{origin}: {source}")]
    In {
        origin: String,
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The error itself, below the file and listener it was found in.
    #[cfg(test)]
    pub fn root(&self) -> &ConfigError {
        match self {
            ConfigError::Listener { source, .. } | ConfigError::In { source, .. } => source.root(),
            e => e,
        }
    }
}

/// A `*_secs` value: the environment variable `var` wins over `value` (the file's or the
/// default); at least 1.
fn secs_value(env: &dyn Env, key: &str, var: String, value: u64) -> Result<Duration, ConfigError> {
    let v = match env.var(&var) {
        Some(s) => s.parse::<u64>().map_err(|_| ConfigError::Env {
            var,
            message: format!("not a number: {s}"),
        })?,
        None => value,
    };
    if v == 0 {
        return Err(bad(key, "must be at least 1"));
    }
    Ok(Duration::from_secs(v))
}

/// `value` (or `default`), refused when 0.
fn at_least_one(key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value {
        Some(0) => Err(bad(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A malformed or out-of-range value of the key `key`.
fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// The API dialects gantry can speak on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Transfer,
    Intervirt,
    Duxcore,
    Distillery,
    FlowManager,
}

impl Dialect {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "transfer" => Ok(Dialect::Transfer),
            "intervirt" => Ok(Dialect::Intervirt),
            "duxcore" => Ok(Dialect::Duxcore),
            "distillery" => Ok(Dialect::Distillery),
            "flowmanager" => Ok(Dialect::FlowManager),
            other => Err(ConfigError::UnknownDialect(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Transfer => "transfer",
            Dialect::Intervirt => "intervirt",
            Dialect::Duxcore => "duxcore",
            Dialect::Distillery => "distillery",
            Dialect::FlowManager => "flowmanager",
        }
    }

    fn default_address(self) -> SocketAddr {
        match self {
            Dialect::Transfer => SocketAddr::from(([127, 0, 0, 1], 54169)),
            // The guest's port that the Intervirt host forwards to: all interfaces, so its
            // listener needs an explicit auth setting (the client sends no credentials).
            Dialect::Intervirt => SocketAddr::from(([0, 0, 0, 0], 55436)),
            // The original daemon's port, on loopback unless the config says otherwise.
            Dialect::Duxcore => SocketAddr::from(([127, 0, 0, 1], 8000)),
            Dialect::Distillery => SocketAddr::from(([127, 0, 0, 1], 54171)),
            // kawaflow's flow-manager port.
            Dialect::FlowManager => SocketAddr::from(([127, 0, 0, 1], 8000)),
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a listener authenticates its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Bound to a loopback address: only local processes can connect.
    Loopback,
    /// `Authorization: Bearer <token>`, token read from a key file at start.
    Token { token: String },
    /// Explicit opt-out for networks where the client cannot authenticate.
    None,
    /// `Authorization: Bearer <token>`, one of several named tokens from a key file.
    Tokens { tokens: Vec<NamedToken> },
    /// A client certificate signed by the listener's `client_ca_file` (TLS only).
    ClientCert,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub dialect: Dialect,
    pub address: SocketAddr,
    pub auth: Auth,
    /// Path prefix before `/api`, `/events` and `/apidoc` (transfer only; "" = none).
    pub prefix: String,
    /// Which origins, hosts and peers it serves.
    pub access: Access,
    /// TLS, when configured.
    pub tls: Option<TlsFiles>,
    /// The token file of a token listener (for clients that report which file they read).
    pub token_file: Option<PathBuf>,
    /// Serve the dashboard at `[prefix]/ui/` (transfer only).
    pub ui: bool,
    /// Serve `GET /metrics` (Prometheus text format), behind the listener's auth.
    pub metrics: bool,
}

/// How token files are read: the daemon needs every one; a client (the CLI) reads those it
/// may and leaves the token of the others empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    Required,
    IfReadable,
}

#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    /// For routes that read a JSON body (`PUT /settings`); a larger body is 413.
    pub max_body_bytes: u64,
    pub max_upload_bytes: u64,
    /// How often an idle SSE stream (`/api/events`) sends a `: keep-alive` comment.
    pub sse_keepalive: Duration,
    /// Events the SSE bus keeps; a client further behind than this is disconnected.
    pub sse_queue_events: usize,
    /// Websocket sessions one listener serves at once; more are refused with 503.
    pub max_websocket_sessions: usize,
    /// Connections one listener keeps open; at the cap the oldest idle one is closed.
    pub max_connections: usize,
    /// How long a request body may send nothing before the request fails.
    pub body_read_timeout: Duration,
    /// How long a websocket may stay silent (pings are answered by live clients).
    pub websocket_idle_timeout: Duration,
    /// Uploads (app imports, image loads) one listener receives at once; more get 503.
    pub max_concurrent_uploads: usize,
}

/// What apps may ask for, and how large bundles may be (`[apps]`).
#[derive(Debug, Clone, Default)]
pub struct AppsPolicy {
    /// The compose keys an app may use (its `reserved` listeners are filled in at start).
    pub compose: crate::core::compose::ComposePolicy,
    /// Largest app ZIP accepted (None: the bundle checker's default).
    pub max_bundle_bytes: Option<u64>,
    /// Disk space that must stay free after an import (None: the default).
    pub reserve_bytes: Option<u64>,
    /// How long an update waits for a recreated service to become healthy.
    pub health_timeout: Duration,
}

/// Which power backend the Intervirt shutdown and reboot commands use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerBackend {
    /// systemd-logind over D-Bus, falling back to `sync()` + `reboot(2)`.
    Logind,
    /// `sync()` + `reboot(2)` directly.
    Reboot,
    /// Refuse (the default: nothing powers off unless the configuration says so).
    None,
    /// Append the request to `<state_dir>/intervirt/power-requests.log`; for tests.
    Record,
}

/// The Intervirt guest agent (`[intervirt]`).
#[derive(Debug, Clone)]
pub struct IntervirtConfig {
    /// Drop the document's `"status": -1` from progress messages (the real client decodes
    /// strictly and knows no such key).
    pub strict_client: bool,
    pub power: PowerBackend,
    pub upgrade_command: crate::core::intervirt::UpgradeCommand,
    pub upgrade_timeout: Duration,
    /// `update` pulls each container's image again (when a registry answers).
    pub pull_on_update: bool,
    pub stop_timeout_secs: u32,
    /// Run the dataplane in this network namespace (`/run/netns/NAME`) instead of gantry's.
    pub netns: Option<PathBuf>,
}

/// Set (to anything) in the environment of test runs: the real power backends are then a
/// configuration error, so no test can power off or reboot its machine by accident.
pub const FORBID_POWER_ENV: &str = "GANTRY_FORBID_REAL_POWER";

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub docker_host: String,
    pub log_level: tracing::Level,
    pub shutdown_timeout: Duration,
    pub docker_timeout: Duration,
    pub docker_transfer_timeout: Duration,
    pub docker_probe_interval: Duration,
    pub http: HttpLimits,
    pub listeners: Vec<Listener>,
    pub apps: AppsPolicy,
    pub intervirt: IntervirtConfig,
    pub duxcore: DuxcoreConfig,
    pub snapshots: SnapshotsConfig,
    pub flow: FlowConfig,
    pub pool: PoolConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    docker_host: Option<String>,
    log_level: Option<String>,
    shutdown_timeout_secs: Option<u64>,
    docker_timeout_secs: Option<u64>,
    docker_transfer_timeout_secs: Option<u64>,
    docker_probe_interval_secs: Option<u64>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    apps: RawApps,
    #[serde(default)]
    intervirt: RawIntervirt,
    #[serde(default)]
    duxcore: RawDuxcore,
    #[serde(default)]
    snapshots: distillery::RawSnapshots,
    #[serde(default)]
    flowmanager: RawFlow,
    #[serde(default)]
    pool: pool::RawPool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApps {
    #[serde(default)]
    allow_privileged: bool,
    #[serde(default)]
    allow_devices: bool,
    #[serde(default)]
    allow_capabilities: bool,
    #[serde(default)]
    allowed_bind_paths: Vec<PathBuf>,
    max_bundle_bytes: Option<u64>,
    reserve_bytes: Option<u64>,
    health_timeout_secs: Option<u64>,
    #[serde(default)]
    allow_volume_drivers: bool,
    #[serde(default)]
    allow_host_namespaces: bool,
    #[serde(default)]
    allow_shared_resources: bool,
    #[serde(default)]
    allow_network_options: bool,
    #[serde(default)]
    allow_logging_drivers: bool,
    #[serde(default)]
    allowed_host_ports: Vec<RawPorts>,
    #[serde(default)]
    allowed_host_ips: Vec<String>,
}

/// A host port (`8080`) or an inclusive range (`"8000-8099"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPorts {
    One(u16),
    Range(String),
}

fn build_apps(a: RawApps) -> Result<AppsPolicy, ConfigError> {
    if let Some(p) = a.allowed_bind_paths.iter().find(|p| !p.is_absolute()) {
        return Err(bad(
            "apps.allowed_bind_paths",
            format!("\"{}\" is not an absolute path", p.display()),
        ));
    }
    let ports = a
        .allowed_host_ports
        .iter()
        .map(|p| match p {
            RawPorts::One(n) => Ok((*n, *n)),
            RawPorts::Range(r) => parse_port_range(r).ok_or_else(|| {
                bad(
                    "apps.allowed_host_ports",
                    format!("\"{r}\" is neither a port nor a range such as \"8000-8099\""),
                )
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ips = a
        .allowed_host_ips
        .iter()
        .map(|ip| {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                bad(
                    "apps.allowed_host_ips",
                    format!("\"{ip}\" is not an IP address"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let compose = crate::core::compose::ComposePolicy {
        allow_privileged: a.allow_privileged,
        allow_devices: a.allow_devices,
        allow_capabilities: a.allow_capabilities,
        allowed_bind_paths: a.allowed_bind_paths,
        allow_volume_drivers: a.allow_volume_drivers,
        allow_host_namespaces: a.allow_host_namespaces,
        allow_shared_resources: a.allow_shared_resources,
        allow_network_options: a.allow_network_options,
        allow_logging_drivers: a.allow_logging_drivers,
        allowed_host_ports: ports,
        allowed_host_ips: ips,
        ..Default::default()
    };
    Ok(AppsPolicy {
        compose,
        max_bundle_bytes: a.max_bundle_bytes,
        reserve_bytes: a.reserve_bytes,
        health_timeout: match a.health_timeout_secs {
            Some(0) => return Err(bad("apps.health_timeout_secs", "must be at least 1")),
            n => Duration::from_secs(n.unwrap_or(300)),
        },
    })
}

fn parse_port_range(r: &str) -> Option<(u16, u16)> {
    let (a, b) = r.split_once('-').unwrap_or((r, r));
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a <= b).then_some((a, b))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntervirt {
    strict_client: Option<bool>,
    power: Option<String>,
    upgrade_command: Option<RawUpgrade>,
    upgrade_timeout_secs: Option<u64>,
    pull_on_update: Option<bool>,
    stop_timeout_secs: Option<u32>,
    netns: Option<PathBuf>,
}

/// A preset name or a program with arguments.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUpgrade {
    Preset(String),
    Argv(Vec<String>),
}

/// The Flow Manager dialect (`[flowmanager]`).
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// Host directory of the containers' unix sockets (`<name>.sock`) and code (`<name>_code`).
    pub socket_dir: PathBuf,
    /// Period of `container_status_update` broadcasts.
    pub status_interval: Duration,
    /// Largest frame, either way, on a container's socket.
    pub max_frame_bytes: u32,
    /// How long a frame may take to reach a container (and a started frame to arrive).
    pub socket_timeout: Duration,
    /// Log lines a `container_crashed` event carries.
    pub crash_log_lines: u32,
    pub stop_timeout_secs: u32,
    /// Pull an image that is missing locally at create.
    pub pull_missing_images: bool,
    /// How long an updated container must keep running before the update counts (0: no check).
    pub update_settle: Duration,
    /// Socket.IO clients one listener serves at once.
    pub max_clients: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    socket_dir: Option<PathBuf>,
    status_interval_secs: Option<u64>,
    max_frame_bytes: Option<u32>,
    socket_timeout_secs: Option<u64>,
    crash_log_lines: Option<u32>,
    stop_timeout_secs: Option<u32>,
    pull_missing_images: Option<bool>,
    update_settle_secs: Option<u64>,
    max_clients: Option<usize>,
}

fn build_flow(raw: RawFlow) -> Result<FlowConfig, ConfigError> {
    let socket_dir = raw
        .socket_dir
        .unwrap_or_else(|| PathBuf::from("/tmp/kawaflow/sockets"));
    if !socket_dir.is_absolute() {
        return Err(bad(
            "flowmanager.socket_dir",
            format!("\"{}\" is not an absolute path", socket_dir.display()),
        ));
    }
    let at_least_one = |key: &str, v: u64| match v {
        0 => Err(bad(format!("flowmanager.{key}"), "must be at least 1")),
        v => Ok(v),
    };
    let interval = at_least_one(
        "status_interval_secs",
        raw.status_interval_secs.unwrap_or(30),
    )?;
    let timeout = at_least_one("socket_timeout_secs", raw.socket_timeout_secs.unwrap_or(5))?;
    let frame = at_least_one(
        "max_frame_bytes",
        raw.max_frame_bytes.unwrap_or(1 << 20).into(),
    )?;
    let clients = at_least_one("max_clients", raw.max_clients.unwrap_or(512) as u64)?;
    Ok(FlowConfig {
        socket_dir,
        status_interval: Duration::from_secs(interval),
        max_frame_bytes: frame as u32,
        socket_timeout: Duration::from_secs(timeout),
        crash_log_lines: raw.crash_log_lines.unwrap_or(20),
        stop_timeout_secs: raw.stop_timeout_secs.unwrap_or(10),
        pull_missing_images: raw.pull_missing_images.unwrap_or(true),
        update_settle: Duration::from_secs(raw.update_settle_secs.unwrap_or(1)),
        max_clients: clients as usize,
    })
}

fn build_intervirt(raw: RawIntervirt, env: &dyn Env) -> Result<IntervirtConfig, ConfigError> {
    use crate::core::intervirt::UpgradeCommand;
    let power_name = env
        .var("GANTRY_INTERVIRT_POWER")
        .or(raw.power)
        .unwrap_or_else(|| "none".into());
    let power = match power_name.as_str() {
        "logind" => PowerBackend::Logind,
        "reboot" => PowerBackend::Reboot,
        "none" => PowerBackend::None,
        "record" => PowerBackend::Record,
        other => {
            return Err(bad(
                "intervirt.power",
                format!("unknown backend \"{other}\" (logind, reboot, none or record)"),
            ))
        }
    };
    if matches!(power, PowerBackend::Logind | PowerBackend::Reboot)
        && env.var(FORBID_POWER_ENV).is_some()
    {
        return Err(ConfigError::PowerForbidden(power_name));
    }
    let upgrade_command = match raw.upgrade_command {
        None => UpgradeCommand::Auto,
        Some(RawUpgrade::Preset(name)) => UpgradeCommand::preset(&name).ok_or_else(|| {
            bad(
                "intervirt.upgrade_command",
                format!(
                    "unknown preset \"{name}\" (auto, none, apt, apk, opkg, or a list: \
                     [\"program\", \"arg\", ...])"
                ),
            )
        })?,
        Some(RawUpgrade::Argv(argv)) if argv.is_empty() || argv[0].is_empty() => {
            return Err(bad(
                "intervirt.upgrade_command",
                "the list names no program",
            ))
        }
        Some(RawUpgrade::Argv(argv)) => UpgradeCommand::Argv(argv),
    };
    let upgrade_timeout_secs = raw.upgrade_timeout_secs.unwrap_or(3600);
    if upgrade_timeout_secs == 0 {
        return Err(bad("intervirt.upgrade_timeout_secs", "must be at least 1"));
    }
    if let Some(ns) = &raw.netns {
        if !ns.is_absolute() {
            return Err(bad(
                "intervirt.netns",
                format!("\"{}\" is not an absolute path", ns.display()),
            ));
        }
    }
    Ok(IntervirtConfig {
        strict_client: raw.strict_client.unwrap_or(false),
        power,
        upgrade_command,
        upgrade_timeout: Duration::from_secs(upgrade_timeout_secs),
        pull_on_update: raw.pull_on_update.unwrap_or(true),
        stop_timeout_secs: raw.stop_timeout_secs.unwrap_or(10),
        netns: raw.netns,
    })
}

/// The duxcore daemon dialect (`[duxcore]`): its core key and the limits of what clients send.
#[derive(Debug, Clone)]
pub struct DuxcoreConfig {
    /// The core key file (`X-Duxcore-CoreKey` is its bytes in standard base64).
    pub corekey_file: PathBuf,
    /// The key as read at start; None when no duxcore listener is configured.
    pub corekey: Option<Vec<u8>>,
    /// Largest raw root filesystem tar `POST /docker/image` accepts.
    pub max_image_bytes: u64,
    /// Largest `bind_contents` archive (compressed, as downloaded).
    pub bind_contents_max_bytes: u64,
    /// Largest `bind_contents` archive once unpacked (all files together).
    pub bind_contents_max_unpacked_bytes: u64,
    /// Entries a `bind_contents` archive may hold.
    pub bind_contents_max_entries: usize,
    /// How long fetching a `bind_contents` archive may take, all of it.
    pub bind_contents_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDuxcore {
    corekey_file: Option<PathBuf>,
    max_image_bytes: Option<u64>,
    bind_contents_max_bytes: Option<u64>,
    bind_contents_max_unpacked_bytes: Option<u64>,
    bind_contents_max_entries: Option<usize>,
    bind_contents_timeout_secs: Option<u64>,
}

/// Reads the core key when a duxcore listener needs it: a missing, unreadable or empty key
/// file is a configuration error, so gantry does not start with no way to authenticate.
fn build_duxcore(
    raw: RawDuxcore,
    env: &dyn Env,
    state_dir: &Path,
    listeners: &[Listener],
    tokens: Tokens,
) -> Result<DuxcoreConfig, ConfigError> {
    let corekey_file = env
        .var("GANTRY_DUXCORE_COREKEY_FILE")
        .map(PathBuf::from)
        .or(raw.corekey_file)
        .unwrap_or_else(|| state_dir.join("corekey.bin"));
    let corekey = if !listeners.iter().any(|l| l.dialect == Dialect::Duxcore) {
        None
    } else if tokens == Tokens::IfReadable {
        // A client (the CLI) never uses the key; `gantry check` reads the file itself.
        read_corekey(&corekey_file).ok()
    } else {
        Some(read_corekey(&corekey_file)?)
    };
    let positive = |key: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(bad(format!("duxcore.{key}"), "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(DuxcoreConfig {
        corekey_file,
        corekey,
        max_image_bytes: positive("max_image_bytes", raw.max_image_bytes, 4 << 30)?,
        bind_contents_max_bytes: positive(
            "bind_contents_max_bytes",
            raw.bind_contents_max_bytes,
            1 << 30,
        )?,
        bind_contents_max_unpacked_bytes: positive(
            "bind_contents_max_unpacked_bytes",
            raw.bind_contents_max_unpacked_bytes,
            4 << 30,
        )?,
        bind_contents_max_entries: positive(
            "bind_contents_max_entries",
            raw.bind_contents_max_entries.map(|n| n as u64),
            100_000,
        )? as usize,
        bind_contents_timeout: Duration::from_secs(positive(
            "bind_contents_timeout_secs",
            raw.bind_contents_timeout_secs,
            600,
        )?),
    })
}

/// The core key's bytes; an empty file is refused (an empty key would let an empty header in).
pub fn read_corekey(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let key = std::fs::read(path).map_err(|source| ConfigError::CoreKeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    if key.is_empty() {
        return Err(ConfigError::CoreKeyFile {
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "the file is empty: the core key needs at least one byte",
            ),
        });
    }
    Ok(key)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    header_read_timeout_secs: Option<u64>,
    max_body_bytes: Option<u64>,
    max_upload_bytes: Option<u64>,
    sse_keepalive_secs: Option<u64>,
    sse_queue_events: Option<usize>,
    max_websocket_sessions: Option<usize>,
    max_connections: Option<usize>,
    body_read_timeout_secs: Option<u64>,
    websocket_idle_timeout_secs: Option<u64>,
    max_concurrent_uploads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    dialect: String,
    address: Option<String>,
    auth: Option<String>,
    token_file: Option<PathBuf>,
    prefix: Option<String>,
    ui: Option<bool>,
    metrics: Option<bool>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allowed_peers: Vec<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_plain_http: bool,
}

/// Where the configuration comes from.
pub enum Source<'a> {
    /// `--config PATH` was given: the file must exist.
    Explicit(&'a Path),
    /// No `--config`: use the default path if it exists, else built-in defaults.
    Default,
}

/// Reads environment variables; a seam so tests can pass a map.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

/// No environment variable at all (tests).
#[cfg(test)]
pub(crate) struct NoEnv;

#[cfg(test)]
impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

impl Config {
    pub fn load(source: Source<'_>, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::load_with(source, env, Tokens::Required)
    }

    pub fn load_with(
        source: Source<'_>,
        env: &dyn Env,
        tokens: Tokens,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match source {
            Source::Explicit(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
                path.display().to_string(),
            ),
            Source::Default => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
                Ok(text) => (text, DEFAULT_CONFIG_PATH.to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (String::new(), "built-in defaults".to_string())
                }
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: DEFAULT_CONFIG_PATH.into(),
                        source,
                    })
                }
            },
        };
        Self::parse_with(&text, env, tokens).map_err(|e| ConfigError::In {
            origin,
            source: Box::new(e),
        })
    }

    #[cfg(test)]
    pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::parse_with(text, env, Tokens::Required)
    }

    fn parse_with(text: &str, env: &dyn Env, tokens: Tokens) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        Self::from_raw(raw, env, tokens)
    }

    fn from_raw(raw: RawConfig, env: &dyn Env, tokens: Tokens) -> Result<Config, ConfigError> {
        let secs = |key: &str, file: Option<u64>, default: u64| env_secs(env, key, file, default);

        let state_dir = env
            .var("GANTRY_STATE_DIR")
            .map(PathBuf::from)
            .or(raw.state_dir)
            .unwrap_or_else(|| default_state_dir(env));

        let docker_host = env
            .var("GANTRY_DOCKER_HOST")
            .or(raw.docker_host)
            .or_else(|| env.var("DOCKER_HOST"))
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        validate_docker_host(&docker_host)?;

        let level = env
            .var("GANTRY_LOG_LEVEL")
            .or(raw.log_level)
            .unwrap_or_else(|| "info".into());
        let log_level = level
            .parse::<tracing::Level>()
            .map_err(|_| bad("log_level", format!("unknown level \"{level}\"")))?;

        let http = build_http(&raw.http, env)?;
        let listeners = build_listeners(raw.listeners, env, tokens)?;
        let duxcore = build_duxcore(raw.duxcore, env, &state_dir, &listeners, tokens)?;
        let snapshots = distillery::build_snapshots(raw.snapshots, &state_dir)?;
        Ok(Config {
            state_dir,
            docker_host,
            log_level,
            shutdown_timeout: secs("shutdown_timeout_secs", raw.shutdown_timeout_secs, 10)?,
            docker_timeout: secs("docker_timeout_secs", raw.docker_timeout_secs, 60)?,
            docker_transfer_timeout: secs(
                "docker_transfer_timeout_secs",
                raw.docker_transfer_timeout_secs,
                3600,
            )?,
            docker_probe_interval: secs(
                "docker_probe_interval_secs",
                raw.docker_probe_interval_secs,
                2,
            )?,
            http,
            listeners,
            apps: build_apps(raw.apps)?,
            intervirt: build_intervirt(raw.intervirt, env)?,
            duxcore,
            snapshots,
            flow: build_flow(raw.flowmanager)?,
            pool: pool::build(raw.pool, env)?,
        })
    }
}

/// A duration in seconds: `GANTRY_<KEY>`, else the file's value, else the default.
fn env_secs(
    env: &dyn Env,
    key: &str,
    file: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let var = format!("GANTRY_{}", key.to_uppercase());
    secs_value(env, key, var, file.unwrap_or(default))
}

/// The `[http]` limits, each with its default.
fn build_http(raw: &RawHttp, env: &dyn Env) -> Result<HttpLimits, ConfigError> {
    let secs = |key: &str, file: Option<u64>, default: u64| env_secs(env, key, file, default);
    Ok(HttpLimits {
        header_read_timeout: secs("header_read_timeout_secs", raw.header_read_timeout_secs, 10)?,
        max_body_bytes: raw.max_body_bytes.unwrap_or(1 << 20),
        max_upload_bytes: raw.max_upload_bytes.unwrap_or(16 << 30),
        sse_keepalive: secs("sse_keepalive_secs", raw.sse_keepalive_secs, 15)?,
        sse_queue_events: match raw.sse_queue_events {
            Some(0) => return Err(bad("http.sse_queue_events", "must be at least 1")),
            Some(n) => n,
            None => crate::core::events::DEFAULT_CAPACITY,
        },
        max_websocket_sessions: match raw.max_websocket_sessions {
            Some(0) => return Err(bad("http.max_websocket_sessions", "must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_WEBSOCKET_SESSIONS,
        },
        max_connections: at_least_one("http.max_connections", raw.max_connections, 512)?,
        body_read_timeout: secs("body_read_timeout_secs", raw.body_read_timeout_secs, 30)?,
        websocket_idle_timeout: secs(
            "websocket_idle_timeout_secs",
            raw.websocket_idle_timeout_secs,
            120,
        )?,
        max_concurrent_uploads: at_least_one(
            "http.max_concurrent_uploads",
            raw.max_concurrent_uploads,
            4,
        )?,
    })
}

/// The listeners of the file and the environment (a transfer listener when none), each
/// checked, with no two on one address.
fn build_listeners(
    mut raws: Vec<RawListener>,
    env: &dyn Env,
    tokens: Tokens,
) -> Result<Vec<Listener>, ConfigError> {
    apply_listener_env(&mut raws, env)?;
    if raws.is_empty() {
        raws.push(RawListener {
            dialect: "transfer".into(),
            ..RawListener::default()
        });
    }
    let listeners = raws
        .into_iter()
        .enumerate()
        .map(|(index, l)| {
            build_listener(l, tokens).map_err(|e| ConfigError::Listener {
                index,
                source: Box::new(e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Port 0 asks the kernel for a free port: several listeners may ask.
    for (i, a) in listeners.iter().enumerate() {
        if a.address.port() != 0 && listeners[..i].iter().any(|b| b.address == a.address) {
            return Err(ConfigError::DuplicateAddress(a.address));
        }
    }
    Ok(listeners)
}

/// `GANTRY_<DIALECT>_{ADDRESS,AUTH,TOKEN_FILE}` apply to every listener of that dialect,
/// creating one when the file has none.
fn apply_listener_env(raws: &mut Vec<RawListener>, env: &dyn Env) -> Result<(), ConfigError> {
    for dialect in [
        "transfer",
        "intervirt",
        "flowmanager",
        "duxcore",
        "distillery",
    ] {
        let prefix = format!("GANTRY_{}_", dialect.to_uppercase());
        let address = env.var(&format!("{prefix}ADDRESS"));
        let auth = env.var(&format!("{prefix}AUTH"));
        let token_file = env.var(&format!("{prefix}TOKEN_FILE"));
        // Only the transfer dialect has a path prefix.
        let path_prefix = match dialect {
            "transfer" => env.var(&format!("{prefix}PREFIX")),
            _ => None,
        };
        if address.is_none() && auth.is_none() && token_file.is_none() && path_prefix.is_none() {
            continue;
        }
        if !raws.iter().any(|l| l.dialect == dialect) {
            raws.push(RawListener {
                dialect: dialect.into(),
                ..RawListener::default()
            });
        }
        for l in raws.iter_mut().filter(|l| l.dialect == dialect) {
            if address.is_some() {
                l.address.clone_from(&address);
            }
            if auth.is_some() {
                l.auth.clone_from(&auth);
            }
            if let Some(t) = &token_file {
                l.token_file = Some(PathBuf::from(t));
            }
            if path_prefix.is_some() {
                l.prefix.clone_from(&path_prefix);
            }
        }
    }
    Ok(())
}

fn build_listener(raw: RawListener, tokens: Tokens) -> Result<Listener, ConfigError> {
    let dialect = Dialect::parse(&raw.dialect)?;
    let address = match &raw.address {
        Some(a) => a
            .parse::<SocketAddr>()
            .map_err(|_| bad("address", format!("\"{a}\" is not IP:PORT")))?,
        None => dialect.default_address(),
    };
    let auth = build_auth(dialect, &raw, address, tokens)?;
    if raw.token_file.is_some() && !matches!(auth, Auth::Token { .. } | Auth::Tokens { .. }) {
        return Err(bad(
            "token_file",
            "is set but auth is not \"token\" or \"tokens\"",
        ));
    }
    let prefix = match raw.prefix {
        Some(p) if dialect != Dialect::Transfer => {
            return Err(bad(
                "prefix",
                format!("\"{p}\": only transfer listeners have a path prefix"),
            ))
        }
        Some(p) => validate_prefix(&p)?,
        None => String::new(),
    };
    let ui = raw.ui.unwrap_or(false);
    if ui && dialect != Dialect::Transfer {
        return Err(bad("ui", "only transfer listeners serve the dashboard"));
    }
    let security = security::RawSecurity {
        allowed_origins: raw.allowed_origins,
        allowed_hosts: raw.allowed_hosts,
        allowed_peers: raw.allowed_peers,
        tls_cert_file: raw.tls_cert_file,
        tls_key_file: raw.tls_key_file,
        client_ca_file: raw.client_ca_file,
        allow_plain_http: raw.allow_plain_http,
    };
    let (access, tls) = security::build(security, address, &auth)?;
    Ok(Listener {
        dialect,
        address,
        auth,
        prefix,
        token_file: raw.token_file,
        ui,
        metrics: raw.metrics.unwrap_or(false),
        access,
        tls,
    })
}

/// The listener's `auth` (with its token file): loopback by default on a loopback address,
/// named tokens always for a distillery listener.
fn build_auth(
    dialect: Dialect,
    raw: &RawListener,
    address: SocketAddr,
    tokens: Tokens,
) -> Result<Auth, ConfigError> {
    let loopback = address.ip().is_loopback();
    // A distillery client always authenticates with one of the named tokens.
    let auth_name = match (dialect, raw.auth.as_deref()) {
        (Dialect::Distillery, None | Some("tokens")) => Some("tokens"),
        (Dialect::Distillery, Some(other)) => {
            return Err(bad(
                "auth",
                format!("\"{other}\": a distillery listener takes auth = \"tokens\""),
            ))
        }
        (_, a) => a,
    };
    match auth_name {
        None if loopback => Ok(Auth::Loopback),
        None => Err(ConfigError::NoAuth(address)),
        Some("loopback") if loopback => Ok(Auth::Loopback),
        Some("loopback") => Err(bad(
            "auth",
            format!("\"loopback\" needs a loopback address, not {address}"),
        )),
        Some("token") => {
            let path = raw
                .token_file
                .as_ref()
                .ok_or_else(|| bad("auth", "\"token\" needs token_file"))?;
            let token = match std::fs::read_to_string(path) {
                Ok(text) => text.trim().to_string(),
                // A client that may not read the file leaves the token empty.
                Err(_) if tokens == Tokens::IfReadable => String::new(),
                Err(source) => {
                    return Err(ConfigError::TokenFile {
                        path: path.clone(),
                        source,
                    })
                }
            };
            if token.len() < 16 && !(token.is_empty() && tokens == Tokens::IfReadable) {
                return Err(bad(
                    "token_file",
                    format!(
                        "{}: the token must be at least 16 characters",
                        path.display()
                    ),
                ));
            }
            Ok(Auth::Token { token })
        }
        Some("tokens") => {
            let path = raw
                .token_file
                .as_ref()
                .ok_or_else(|| bad("auth", "\"tokens\" needs token_file"))?;
            let named = match distillery::read_tokens(path) {
                // A client that may not read the file knows no token of it.
                Err(ConfigError::TokenFile { .. }) if tokens == Tokens::IfReadable => Vec::new(),
                read => read?,
            };
            Ok(Auth::Tokens { tokens: named })
        }
        Some("none") => Ok(Auth::None),
        Some("client-cert") => Ok(Auth::ClientCert),
        Some(other) => Err(bad(
            "auth",
            format!("unknown auth \"{other}\" (loopback, token, tokens, client-cert or none)"),
        )),
    }
}

/// A path prefix such as `/scaleit` or `/gw/apps`: absolute, no trailing `/`, segments of
/// URL-safe characters (letters, digits, `-`, `_`, `.`, `~`), no `.` or `..` segments.
/// `""` means no prefix.
fn validate_prefix(p: &str) -> Result<String, ConfigError> {
    if p.is_empty() {
        return Ok(String::new());
    }
    let fail = |why: &str| Err(bad("prefix", format!("\"{p}\": {why}")));
    if !p.starts_with('/') {
        return fail("must start with '/' (e.g. \"/scaleit\")");
    }
    if p.len() > 256 {
        return fail("longer than 256 characters");
    }
    if p.ends_with('/') {
        return fail("must not end with '/' (use \"\" for no prefix)");
    }
    for seg in p[1..].split('/') {
        if seg.is_empty() {
            return fail("has an empty segment (\"//\")");
        }
        if seg == "." || seg == ".." {
            return fail("must not contain \".\" or \"..\" segments");
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~')))
        {
            return fail(&format!(
                "character {c:?} is not allowed (letters, digits, '-', '_', '.', '~' and '/')"
            ));
        }
    }
    Ok(p.to_string())
}

fn validate_docker_host(host: &str) -> Result<(), ConfigError> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.starts_with('/') {
            return Ok(());
        }
        return Err(bad(
            "docker_host",
            format!("\"{host}\": unix:// needs an absolute path"),
        ));
    }
    if host.starts_with("tcp://") || host.starts_with("http://") {
        return Ok(());
    }
    Err(bad(
        "docker_host",
        format!("\"{host}\": expected unix:///path or tcp://host:port"),
    ))
}

/// systemd's `StateDirectory=` first, then the FHS place when we may write there, then the
/// user's XDG state directory.
fn default_state_dir(env: &dyn Env) -> PathBuf {
    if let Some(dir) = env.var("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        return PathBuf::from(dir.split(':').next().unwrap_or(&dir));
    }
    let system = Path::new("/var/lib/gantry");
    if is_writable_or_creatable(system) {
        return system.to_path_buf();
    }
    if let Some(xdg) = env.var("XDG_STATE_HOME") {
        return PathBuf::from(xdg).join("gantry");
    }
    if let Some(home) = env.var("HOME") {
        return PathBuf::from(home).join(".local/state/gantry");
    }
    std::env::temp_dir().join(format!("gantry-{}", nix::unistd::getuid()))
}

fn is_writable_or_creatable(dir: &Path) -> bool {
    let probe = if dir.exists() {
        dir
    } else {
        match dir.parent() {
            Some(p) => p,
            None => return false,
        }
    };
    nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
    }
    fn env(pairs: &[(&'static str, &str)]) -> MapEnv {
        MapEnv(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    /// The key a refused config names (`Value` errors), below file and listener.
    fn refused_key(text: &str, vars: &[(&'static str, &str)]) -> String {
        match Config::parse(text, &env(vars)).unwrap_err().root() {
            ConfigError::Value { key, .. } => key.clone(),
            other => panic!("{text:?}: expected a refused value, got {other:?}"),
        }
    }

    #[test]
    fn empty_config_serves_transfer_on_loopback() {
        let c = Config::parse("", &env(&[("STATE_DIRECTORY", "/tmp/x")])).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:54169");
        assert_eq!(c.listeners[0].auth, Auth::Loopback);
        assert_eq!(c.docker_host, DEFAULT_DOCKER_HOST);
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn docker_host_precedence() {
        let file = "docker_host = \"unix:///file.sock\"";
        let c = Config::parse(file, &env(&[("DOCKER_HOST", "unix:///env.sock")])).unwrap();
        assert_eq!(c.docker_host, "unix:///file.sock");
        let c = Config::parse("", &env(&[("DOCKER_HOST", "unix:///env.sock")])).unwrap();
        assert_eq!(c.docker_host, "unix:///env.sock");
        let c = Config::parse(file, &env(&[("GANTRY_DOCKER_HOST", "unix:///g.sock")])).unwrap();
        assert_eq!(c.docker_host, "unix:///g.sock");
        assert_eq!(refused_key("docker_host = \"ftp://x\"", &[]), "docker_host");
    }

    #[test]
    fn non_loopback_needs_explicit_auth() {
        let t = "[[listeners]]\ndialect = \"transfer\"\naddress = \"0.0.0.0:1\"\n";
        let e = Config::parse(t, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("no auth"), "{e}");
        assert!(matches!(
            e,
            ConfigError::Listener { index: 0, ref source } if matches!(**source, ConfigError::NoAuth(_))
        ));
        let c = Config::parse(&format!("{t}auth = \"none\"\n"), &env(&[])).unwrap();
        assert_eq!(c.listeners[0].auth, Auth::None);
        let e = Config::parse(&format!("{t}auth = \"loopback\"\n"), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("loopback"));
        assert_eq!(
            refused_key(&format!("{t}auth = \"loopback\"\n"), &[]),
            "auth"
        );
    }

    #[test]
    fn sse_keys() {
        let c = Config::parse("", &env(&[])).unwrap();
        assert_eq!(c.http.sse_keepalive, Duration::from_secs(15));
        assert_eq!(c.http.sse_queue_events, 256);
        let c = Config::parse(
            "[http]\nsse_keepalive_secs = 2\nsse_queue_events = 8",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.http.sse_keepalive, Duration::from_secs(2));
        assert_eq!(c.http.sse_queue_events, 8);
        assert_eq!(
            refused_key("[http]\nsse_queue_events = 0", &[]),
            "http.sse_queue_events"
        );
        assert_eq!(
            refused_key("[http]\nsse_keepalive_secs = 0", &[]),
            "sse_keepalive_secs"
        );
    }

    #[test]
    fn env_overrides_listener() {
        let c = Config::parse(
            "",
            &env(&[
                ("GANTRY_TRANSFER_ADDRESS", "127.0.0.2:9"),
                ("GANTRY_SHUTDOWN_TIMEOUT_SECS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.2:9");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
    }

    #[test]
    fn apps_policy() {
        let c = Config::parse(
            "[apps]\nallow_privileged = true\nallowed_bind_paths = [\"/srv/data\"]\nmax_bundle_bytes = 1000\n\
             allow_host_namespaces = true\nallowed_host_ports = [8080, \"9000-9099\"]\nallowed_host_ips = [\"127.0.0.1\"]\n",
            &env(&[]),
        )
        .unwrap();
        let p = &c.apps.compose;
        assert!(p.allow_privileged && !p.allow_devices);
        assert!(p.allow_host_namespaces && !p.allow_volume_drivers);
        assert_eq!(p.allowed_bind_paths, vec![PathBuf::from("/srv/data")]);
        assert_eq!(p.allowed_host_ports, vec![(8080, 8080), (9000, 9099)]);
        assert_eq!(
            p.allowed_host_ips,
            vec![std::net::IpAddr::from([127, 0, 0, 1])]
        );
        assert_eq!(c.apps.max_bundle_bytes, Some(1000));
        for (text, key) in [
            ("allowed_bind_paths = [\"rel\"]", "apps.allowed_bind_paths"),
            ("allowed_host_ports = [\"9-1\"]", "apps.allowed_host_ports"),
            ("allowed_host_ips = [\"x\"]", "apps.allowed_host_ips"),
        ] {
            assert_eq!(refused_key(&format!("[apps]\n{text}\n"), &[]), key);
        }
        assert!(matches!(
            Config::parse("[apps]\nbogus = 1\n", &env(&[])),
            Err(ConfigError::Syntax(_))
        ));
    }

    #[test]
    fn rejects_unknown_keys_and_dialects() {
        let e = Config::parse("bogus = 1", &env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)), "{e:?}");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::parse("[[listeners]]\ndialect = \"gopher\"\n", &env(&[])).unwrap_err();
        assert!(e.to_string().contains("unknown dialect"));
        assert!(matches!(e.root(), ConfigError::UnknownDialect(d) if d == "gopher"));
        let e = Config::parse("shutdown_timeout_secs = 0", &env(&[])).unwrap_err();
        assert!(e.to_string().contains("at least 1"));
        assert_eq!(
            refused_key("shutdown_timeout_secs = 0", &[]),
            "shutdown_timeout_secs"
        );
        let e = Config::parse("", &env(&[("GANTRY_SHUTDOWN_TIMEOUT_SECS", "x")])).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Env { var, .. } if var == "GANTRY_SHUTDOWN_TIMEOUT_SECS"),
            "{e:?}"
        );
        let t = "[[listeners]]\ndialect = \"transfer\"\n";
        let e = Config::parse(&format!("{t}{t}"), &env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::DuplicateAddress(_)), "{e:?}");
        let t = "[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:0\"\n";
        assert_eq!(
            Config::parse(&format!("{t}{t}"), &env(&[]))
                .unwrap()
                .listeners
                .len(),
            2
        );
    }

    #[test]
    fn intervirt_listener_and_section() {
        // The default address is 0.0.0.0:55436, which needs an explicit auth setting.
        let t = "[[listeners]]\ndialect = \"intervirt\"\n";
        let e = Config::parse(t, &env(&[])).unwrap_err().to_string();
        assert!(e.contains("0.0.0.0:55436") && e.contains("no auth"), "{e}");
        let c = Config::parse(&format!("{t}auth = \"none\"\n"), &env(&[])).unwrap();
        assert_eq!(c.listeners[0].dialect, Dialect::Intervirt);
        assert_eq!(c.listeners[0].address.to_string(), "0.0.0.0:55436");
        assert_eq!(c.listeners[0].auth, Auth::None);
        // Defaults: no power control, auto upgrade, pulls on update, document's status key.
        assert_eq!(c.intervirt.power, PowerBackend::None);
        assert!(!c.intervirt.strict_client && c.intervirt.pull_on_update);
        assert_eq!(
            c.intervirt.upgrade_command,
            crate::core::intervirt::UpgradeCommand::Auto
        );

        let c = Config::parse(
            "[intervirt]\nstrict_client = true\npower = \"record\"\nupgrade_command = [\"sh\", \"-c\", \"true\"]\n",
            &env(&[]),
        )
        .unwrap();
        assert!(c.intervirt.strict_client);
        assert_eq!(c.intervirt.power, PowerBackend::Record);
        assert_eq!(
            c.intervirt.upgrade_command,
            crate::core::intervirt::UpgradeCommand::Argv(vec![
                "sh".into(),
                "-c".into(),
                "true".into()
            ])
        );
        for (text, key) in [
            ("[intervirt]\npower = \"halt\"\n", "intervirt.power"),
            (
                "[intervirt]\nupgrade_command = \"yum\"\n",
                "intervirt.upgrade_command",
            ),
            (
                "[intervirt]\nupgrade_command = []\n",
                "intervirt.upgrade_command",
            ),
            ("[intervirt]\nnetns = \"rel\"\n", "intervirt.netns"),
        ] {
            assert_eq!(refused_key(text, &[]), key, "{text}");
        }

        // The real backends are refused in test runs.
        let real = "[intervirt]\npower = \"logind\"\n";
        assert_eq!(
            Config::parse(real, &env(&[])).unwrap().intervirt.power,
            PowerBackend::Logind
        );
        let e = Config::parse(real, &env(&[(FORBID_POWER_ENV, "1")])).unwrap_err();
        assert!(e.to_string().contains(FORBID_POWER_ENV));
        assert!(matches!(e, ConfigError::PowerForbidden(ref p) if p == "logind"));
        let e = Config::parse(
            "",
            &env(&[
                (FORBID_POWER_ENV, "1"),
                ("GANTRY_INTERVIRT_POWER", "reboot"),
            ]),
        );
        assert!(matches!(e, Err(ConfigError::PowerForbidden(ref p)) if p == "reboot"));

        // Environment: GANTRY_INTERVIRT_ADDRESS creates the listener.
        let c = Config::parse("", &env(&[("GANTRY_INTERVIRT_ADDRESS", "127.0.0.1:9")])).unwrap();
        assert!(c
            .listeners
            .iter()
            .any(|l| l.dialect == Dialect::Intervirt && l.auth == Auth::Loopback));
    }

    #[test]
    fn flowmanager_listener_and_section() {
        let c = Config::parse("[[listeners]]\ndialect = \"flowmanager\"\n", &env(&[])).unwrap();
        assert_eq!(c.listeners[0].dialect, Dialect::FlowManager);
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8000");
        assert_eq!(c.listeners[0].auth, Auth::Loopback);
        assert_eq!(c.flow.socket_dir, PathBuf::from("/tmp/kawaflow/sockets"));
        assert_eq!(c.flow.status_interval, Duration::from_secs(30));
        assert_eq!(c.flow.max_frame_bytes, 1 << 20);
        let c = Config::parse(
            "[flowmanager]\nsocket_dir = \"/srv/k\"\nstatus_interval_secs = 2\nmax_clients = 9\n",
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.flow.socket_dir, PathBuf::from("/srv/k"));
        assert_eq!(c.flow.status_interval, Duration::from_secs(2));
        assert_eq!(c.flow.max_clients, 9);
        for (text, key) in [
            (
                "[flowmanager]\nsocket_dir = \"rel\"\n",
                "flowmanager.socket_dir",
            ),
            (
                "[flowmanager]\nstatus_interval_secs = 0\n",
                "flowmanager.status_interval_secs",
            ),
            (
                "[flowmanager]\nmax_frame_bytes = 0\n",
                "flowmanager.max_frame_bytes",
            ),
        ] {
            assert_eq!(refused_key(text, &[]), key, "{text}");
        }
        let c = Config::parse("", &env(&[("GANTRY_FLOWMANAGER_ADDRESS", "127.0.0.1:0")])).unwrap();
        assert!(c
            .listeners
            .iter()
            .any(|l| l.dialect == Dialect::FlowManager));
    }

    #[test]
    fn shipped_guest_config_is_valid() {
        let text = include_str!("../systemd/gantry-guest.toml.example");
        let c = Config::parse(text, &env(&[])).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].dialect, Dialect::Intervirt);
        assert_eq!(c.listeners[0].address.to_string(), "0.0.0.0:55436");
        assert_eq!(c.listeners[0].auth, Auth::None);
        // Only the Intervirt host's port forward may connect; power stays off unless opted in.
        let peers = &c.listeners[0].access.peers;
        assert_eq!(peers, &vec![Cidr::parse("10.0.2.2/32").unwrap()]);
        assert_eq!(c.intervirt.power, PowerBackend::None);
        assert!(Config::parse(text, &env(&[(FORBID_POWER_ENV, "1")])).is_ok());
    }

    #[test]
    fn transfer_prefix_is_validated() {
        let t = |p: &str| format!("[[listeners]]\ndialect = \"transfer\"\nprefix = {p:?}\n");
        let c = Config::parse(&t("/scaleit"), &env(&[])).unwrap();
        assert_eq!(c.listeners[0].prefix, "/scaleit");
        let c = Config::parse(&t("/gw/apps-1.x"), &env(&[])).unwrap();
        assert_eq!(c.listeners[0].prefix, "/gw/apps-1.x");
        assert_eq!(
            Config::parse(&t(""), &env(&[])).unwrap().listeners[0].prefix,
            ""
        );
        assert_eq!(
            Config::parse("", &env(&[])).unwrap().listeners[0].prefix,
            ""
        );
        for bad in [
            "scaleit",
            "/",
            "/scaleit/",
            "/a//b",
            "/a/../b",
            "/..",
            "/./x",
            "/a b",
            "/a?b",
            "/a#b",
            "/a%2Fb",
            "/ä",
        ] {
            let e = Config::parse(&t(bad), &env(&[])).unwrap_err().to_string();
            assert!(e.contains("prefix"), "{bad}: {e}");
            assert_eq!(refused_key(&t(bad), &[]), "prefix");
        }
        let long = format!("/{}", "a".repeat(300));
        assert_eq!(refused_key(&t(&long), &[]), "prefix");
        // Environment override, and only for transfer listeners.
        let c = Config::parse(&t("/a"), &env(&[("GANTRY_TRANSFER_PREFIX", "/b")])).unwrap();
        assert_eq!(c.listeners[0].prefix, "/b");
        let c = Config::parse("", &env(&[("GANTRY_TRANSFER_PREFIX", "/env")])).unwrap();
        assert_eq!(c.listeners[0].prefix, "/env");
        assert_eq!(
            refused_key("", &[("GANTRY_TRANSFER_PREFIX", "env/")]),
            "prefix"
        );
        let e = Config::parse(
            "[[listeners]]\ndialect = \"intervirt\"\nauth = \"none\"\nprefix = \"/x\"\n",
            &env(&[]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("only transfer"), "{e}");
    }

    #[test]
    fn dashboard_and_metrics_are_opt_in_per_listener() {
        let l = |extra: &str| format!("[[listeners]]\ndialect = \"transfer\"\n{extra}");
        let c = Config::parse(&l(""), &env(&[])).unwrap();
        assert!(!c.listeners[0].ui && !c.listeners[0].metrics);
        let c = Config::parse(&l("ui = true\nmetrics = true\n"), &env(&[])).unwrap();
        assert!(c.listeners[0].ui && c.listeners[0].metrics);
        let iv = "[[listeners]]\ndialect = \"intervirt\"\nauth = \"none\"\n";
        assert_eq!(refused_key(&format!("{iv}ui = true\n"), &[]), "ui");
        let c = Config::parse(&format!("{iv}metrics = true\n"), &env(&[])).unwrap();
        assert!(c.listeners[0].metrics);
    }

    #[test]
    fn clients_load_a_config_whose_token_file_they_cannot_read() {
        let t = "[[listeners]]\ndialect = \"transfer\"\nauth = \"token\"\n\
                 token_file = \"/nonexistent/gantry/token\"\n";
        let e = Config::parse(t, &env(&[])).unwrap_err();
        assert!(matches!(e.root(), ConfigError::TokenFile { .. }), "{e:?}");
        let c = Config::parse_with(t, &env(&[]), Tokens::IfReadable).unwrap();
        let l = &c.listeners[0];
        assert_eq!(
            l.auth,
            Auth::Token {
                token: String::new()
            }
        );
        assert_eq!(
            l.token_file.as_deref(),
            Some(Path::new("/nonexistent/gantry/token"))
        );
    }

    #[test]
    fn clients_load_a_config_whose_core_key_or_tokens_file_they_cannot_read() {
        let t = "state_dir = \"/nonexistent/gantry\"\n\
                 [[listeners]]\ndialect = \"duxcore\"\n\
                 [[listeners]]\ndialect = \"distillery\"\n\
                 token_file = \"/nonexistent/gantry/tokens\"\n";
        assert!(Config::parse(t, &env(&[])).is_err());
        let c = Config::parse_with(t, &env(&[]), Tokens::IfReadable).unwrap();
        assert_eq!(c.duxcore.corekey, None);
        assert_eq!(c.listeners[1].auth, Auth::Tokens { tokens: Vec::new() });
        // A file that is there but wrong is still refused.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("tokens");
        std::fs::write(&bad, "admin short\n").unwrap();
        let t = t.replace("/nonexistent/gantry/tokens", &bad.display().to_string());
        assert!(Config::parse_with(&t, &env(&[]), Tokens::IfReadable).is_err());
    }

    #[test]
    fn duxcore_listener_reads_its_core_key_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().display().to_string();
        let t = format!("state_dir = {state:?}\n[[listeners]]\ndialect = \"duxcore\"\n");
        // The default key file (state dir) is missing: a configuration error.
        let e = Config::parse(&t, &env(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::CoreKeyFile { .. }), "{e:?}");
        assert!(e.to_string().contains("corekey.bin"), "{e}");
        std::fs::write(dir.path().join("corekey.bin"), [0u8, 1, 2]).unwrap();
        let c = Config::parse(&t, &env(&[])).unwrap();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8000");
        assert_eq!(c.duxcore.corekey.as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(c.duxcore.max_image_bytes, 4 << 30);
        // Another file, named in the section or the environment; an empty one is refused.
        let other = dir.path().join("other.key");
        std::fs::write(&other, b"").unwrap();
        let named = format!(
            "{t}[duxcore]\ncorekey_file = {:?}\n",
            other.display().to_string()
        );
        assert!(matches!(
            Config::parse(&named, &env(&[])).unwrap_err(),
            ConfigError::CoreKeyFile { .. }
        ));
        let o = other.display().to_string();
        let e = Config::parse(&t, &env(&[("GANTRY_DUXCORE_COREKEY_FILE", &o)])).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        // Without a duxcore listener nothing is read.
        let c = Config::parse(&format!("state_dir = {state:?}\n"), &env(&[])).unwrap();
        assert_eq!(c.duxcore.corekey, None);
        assert_eq!(
            refused_key(&format!("{t}[duxcore]\nmax_image_bytes = 0\n"), &[]),
            "duxcore.max_image_bytes"
        );
    }

    #[test]
    fn token_auth_reads_and_checks_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  0123456789abcdef0123\n").unwrap();
        let t = format!(
            "[[listeners]]\ndialect = \"transfer\"\naddress = \"0.0.0.0:1\"\nauth = \"token\"\ntoken_file = \"{}\"\n",
            path.display()
        );
        // A token in clear on the network is refused unless said explicitly (or TLS).
        assert_eq!(refused_key(&t, &[]), "tls_cert_file");
        let t = format!("{t}allow_plain_http = true\n");
        let c = Config::parse(&t, &env(&[])).unwrap();
        assert_eq!(
            c.listeners[0].auth,
            Auth::Token {
                token: "0123456789abcdef0123".into()
            }
        );
        std::fs::write(&path, "short").unwrap();
        assert_eq!(refused_key(&t, &[]), "token_file");
        std::fs::remove_file(&path).unwrap();
        let e = Config::parse(&t, &env(&[])).unwrap_err();
        assert!(matches!(e.root(), ConfigError::TokenFile { .. }), "{e:?}");
    }

    #[test]
    fn listener_security_keys() {
        let t = "[[listeners]]\ndialect = \"transfer\"\n";
        let c = Config::parse(
            &format!("{t}allowed_origins = [\"https://UI.example/\", \"*\"]\nallowed_hosts = [\"GW.local\"]\nallowed_peers = [\"198.18.0.0/15\", \"::1\"]\n"),
            &env(&[]),
        )
        .unwrap();
        let a = &c.listeners[0].access;
        assert_eq!(a.origins, vec!["https://ui.example"]);
        assert!(a.any_origin);
        assert_eq!(a.hosts, vec!["gw.local"]);
        assert_eq!(a.peers.len(), 2);
        for (line, key) in [
            ("allowed_origins = [\"ui.example\"]", "allowed_origins"),
            ("allowed_hosts = [\"a/b\"]", "allowed_hosts"),
            ("allowed_peers = [\"10.0.0.0/40\"]", "allowed_peers"),
            ("tls_cert_file = \"/c.pem\"", "tls_cert_file"),
            ("auth = \"client-cert\"", "client_ca_file"),
            (
                "tls_cert_file = \"/c\"\ntls_key_file = \"/k\"\nclient_ca_file = \"/ca\"",
                "client_ca_file",
            ),
            ("[http]\nmax_connections = 0", "http.max_connections"),
        ] {
            assert_eq!(refused_key(&format!("{t}{line}\n"), &[]), key, "{line}");
        }
        let c = Config::parse(
            &format!("{t}address = \"0.0.0.0:1\"\nauth = \"client-cert\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\nclient_ca_file = \"/ca\"\n"),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.listeners[0].auth, Auth::ClientCert);
        assert_eq!(
            c.listeners[0].tls.as_ref().unwrap().client_ca,
            Some(PathBuf::from("/ca"))
        );
        // Defaults of the connection limits.
        assert_eq!(c.http.max_connections, 512);
        assert_eq!(c.http.max_concurrent_uploads, 4);
        assert_eq!(c.http.body_read_timeout, Duration::from_secs(30));
    }
}
