//! gantry: one lean daemon for Docker apps, container networking and power on IoT gateways.

// System calls go through nix's safe wrappers. A call nix does not wrap needs a local
// `#[allow(unsafe_code)]` and a `// SAFETY:` comment saying why it is sound.
#![deny(unsafe_code)]
// Built without the App Pool role, the parts of the core only the pool uses lie idle.
#![cfg_attr(not(feature = "pool"), allow(dead_code, unused_imports))]

mod api;
mod cli;
mod config;
mod core;
mod server;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PowerBackend, ProcessEnv, Source};
use crate::core::apps::import::ImportSettings;
use crate::core::apps::lifecycle::Apps;
use crate::core::apps::snapshots::Snapshots;
use crate::core::docker::DockerEngine;
use crate::core::engine::ContainerEngine;
use crate::core::health::EngineHealth;
use crate::core::intervirt::{AgentSettings, IntervirtAgent};
use crate::core::power::{LogindPower, NoPower, Power, RecordingPower, SyscallPower};
use crate::core::templates::Templates;
use crate::core::view::LiveView;
use crate::core::Core;

/// Exit code for a configuration error; the unit's RestartPreventExitStatus= names it.
pub const EXIT_BAD_CONFIG: u8 = 78;
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(name = "gantry", version, about, after_long_help = cli::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Daemon(Daemon),
    #[command(flatten)]
    Operator(cli::Operator),
}

/// The daemon's own commands, parsed alone when one of them is asked for: the daemon then
/// never builds the operator commands' definitions (which would stay in its heap).
#[derive(Parser)]
#[command(name = "gantry", version, about)]
struct DaemonCli {
    #[command(subcommand)]
    command: Daemon,
}

#[derive(Subcommand)]
enum Daemon {
    /// Run the daemon.
    Serve {
        /// Configuration file (default: /etc/gantry/gantry.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print what it resolves to.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ExitCode> {
    let source = match path {
        Some(p) => Source::Explicit(p),
        None => Source::Default,
    };
    Config::load(source, &ProcessEnv).map_err(|e| {
        eprintln!("gantry: configuration error: {e}");
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    let command = match first.as_ref().and_then(|a| a.to_str()) {
        Some("serve" | "check-config") => DaemonCli::parse().command,
        _ => match Cli::parse().command {
            Command::Daemon(d) => d,
            Command::Operator(op) => return cli::run(op),
        },
    };
    match command {
        Daemon::CheckConfig { config } => match load(config.as_ref()) {
            Ok(c) => {
                println!("configuration OK");
                println!("state_dir = {}", c.state_dir.display());
                println!("docker_host = {}", c.docker_host);
                for l in &c.listeners {
                    println!(
                        "listener {} on {} (auth: {})",
                        l.dialect,
                        l.address,
                        auth_name(&l.auth)
                    );
                    if !l.prefix.is_empty() {
                        println!("  path prefix {}", l.prefix);
                    }
                }
                if c.listeners
                    .iter()
                    .any(|l| l.dialect == config::Dialect::Intervirt)
                {
                    println!(
                        "intervirt: power {:?}, upgrade {:?}, strict_client {}",
                        c.intervirt.power, c.intervirt.upgrade_command, c.intervirt.strict_client
                    );
                }
                if let Some(key) = &c.duxcore.corekey {
                    let file = c.duxcore.corekey_file.display();
                    println!("duxcore: core key {file} ({} bytes)", key.len());
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Daemon::Serve { config } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            server::systemd::init_logging(config.log_level);
            server::limits::raise_nofile();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(16)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the async runtime");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            let code = runtime.block_on(serve(config));
            // Connections still open after the grace period are dropped with the runtime.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
    }
}

fn auth_name(auth: &config::Auth) -> &'static str {
    match auth {
        config::Auth::Loopback => "loopback",
        config::Auth::Token { .. } => "token",
        config::Auth::None => "none",
        config::Auth::Tokens { .. } => "tokens",
        config::Auth::ClientCert => "client-cert",
    }
}

/// The device name and settings, in `<state_dir>/prefs/`.
fn gantry_prefs(config: &Config) -> Result<crate::core::prefs::Prefs, ExitCode> {
    crate::core::prefs::Prefs::open(&config.state_dir.join("prefs")).map_err(|e| {
        tracing::error!(error = %e, "cannot open the settings");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// How long the daemon waits at exit for operations to roll back after the shutdown grace
/// period (`shutdown_timeout_secs`) ended them; with the default grace period of 10 s this
/// stays within the unit's TimeoutStopSec=15.
const ROLLBACK_GRACE: std::time::Duration = std::time::Duration::from_secs(4);

async fn serve(config: Config) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&config.state_dir) {
        tracing::error!(dir = %config.state_dir.display(), error = %e, "cannot create the state directory");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    // Bound first: the app policy refuses published ports on gantry's own listeners.
    let bound = match server::bind(&config.listeners).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let addrs: Vec<_> = bound.iter().map(|b| b.local_addr).collect();
    let probes: Vec<_> = bound
        .iter()
        .map(|b| (b.local_addr, b.tls.is_some()))
        .collect();
    let tls: Vec<_> = bound.iter().filter_map(|b| b.tls.clone()).collect();
    let engine: Arc<dyn ContainerEngine> = Arc::new(DockerEngine::new(
        &config.docker_host,
        config.docker_timeout,
        config.docker_transfer_timeout,
    ));
    let stop = CancellationToken::new();
    let health = EngineHealth::spawn(engine.clone(), config.docker_probe_interval, stop.clone());
    let core = match build_core(&config, engine.clone(), health.clone(), &addrs, &stop).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    #[cfg(feature = "pool")]
    core.run_pool(stop.clone());
    spawn_reload_on_hangup(core.clone());
    // Operations left unsettled (Docker down at start or midway) are resolved once it answers.
    tokio::spawn(crate::core::recovery::resolve_pending(
        core.clone(),
        health.clone(),
        stop.clone(),
    ));
    // The live view follows Docker's events (and with them, changes made outside gantry).
    tokio::spawn(crate::core::view::sync::run(
        core.view.clone(),
        engine,
        Some(health.subscribe()),
        stop.clone(),
    ));

    let listening = format!(
        "serving {}",
        bound
            .iter()
            .map(|b| format!("{} on {}", b.config.dialect, b.local_addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut servers = tokio::task::JoinSet::new();
    for b in bound {
        let dialect = api::dialect(b.config.dialect);
        servers.spawn(server::serve(
            b,
            dialect,
            core.clone(),
            config.http.clone(),
            stop.clone(),
            config.shutdown_timeout,
        ));
    }
    server::systemd::notify_ready(&listening);
    // Start-up code ran once; what stays resident from now on is what the daemon uses.
    server::memory::trim_code_after_start(stop.clone());
    server::memory::trim_heap_after_bursts(stop.clone());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), docker = %config.docker_host, state = %config.state_dir.display(), "gantry ready");
    server::systemd::spawn_status_updates(health.subscribe(), listening, stop.clone());
    server::systemd::spawn_watchdog(probes, stop.clone());
    server::tls::spawn_reload(tls, stop.clone());

    wait_for_signal().await;
    shut_down(&core, servers, &stop).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Opens the app store and every part of the core, recovering interrupted operations before
/// anything is served.
async fn build_core(
    config: &Config,
    engine: Arc<dyn ContainerEngine>,
    health: EngineHealth,
    addrs: &[std::net::SocketAddr],
    stop: &CancellationToken,
) -> Result<Arc<Core>, ExitCode> {
    let settings = import_settings(config, addrs);
    let apps = match Apps::open(engine.clone(), &config.state_dir, settings.clone()) {
        Ok(a) => a
            .with_events(gantry_events(config))
            .with_health_timeout(config.apps.health_timeout),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the app store");
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    if let Err(e) = apps.recover().await {
        tracing::warn!(error = %e, "cannot clean up after interrupted imports");
    }
    let intervirt = start_intervirt(config, engine.clone(), stop.clone()).await?;
    let prefs = gantry_prefs(config)?;
    let apps_view = apps.view().clone();
    let services = duxcore_services(config, engine.clone(), apps_view.clone()).await?;
    let snapshots = match Snapshots::open(&config.snapshots.dir, config.snapshots.keep_backups) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the snapshots directory");
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    let flow = start_flow(config, engine.clone(), apps_view, stop.clone()).await?;
    let core = Core::new(engine.clone(), health.clone(), apps)
        .with_intervirt(intervirt)
        .with_prefs(prefs)
        .with_services(services)
        .with_snapshots(snapshots)
        .with_flow(flow);
    with_templates_and_pool(core, config, engine, &settings).map(Arc::new)
}

/// Ends the servers (the shutdown grace period), then waits a little for rollbacks.
async fn shut_down(core: &Core, mut servers: tokio::task::JoinSet<()>, stop: &CancellationToken) {
    tracing::info!("shutting down");
    server::systemd::notify_stopping();
    stop.cancel();
    core.tasks.shut_down();
    while servers.join_next().await.is_some() {}
    // Operations that lost their client when the grace period ran out roll back now.
    if !core.tasks.wait_idle(ROLLBACK_GRACE).await {
        tracing::warn!(
            running = core.tasks.len(),
            "operations still rolling back at exit"
        );
    }
}

/// The template store and (with the `pool` feature) the App Pool; both check bundles as the
/// apps' imports do (`settings`).
fn with_templates_and_pool(
    core: Core,
    config: &Config,
    engine: Arc<dyn ContainerEngine>,
    settings: &ImportSettings,
) -> Result<Core, ExitCode> {
    let view = core.view.clone();
    // Template imports record their intents where the apps' do (recovered with them).
    let with_intents = ImportSettings {
        intents: Some(core.apps.intents().clone()),
        ..settings.clone()
    };
    let templates = Templates::open(engine, view, &config.state_dir, &with_intents);
    let templates = templates.map_err(|e| {
        tracing::error!(error = %e, "cannot open the template store");
        ExitCode::from(EXIT_FAILURE)
    })?;
    with_pool(core.with_templates(templates), config, settings)
}

/// The App Pool's state in `<state_dir>/pool` (builds with the `pool` feature).
#[cfg(feature = "pool")]
fn with_pool(core: Core, config: &Config, settings: &ImportSettings) -> Result<Core, ExitCode> {
    // reqwest's rustls needs a process-wide crypto provider; ring is the one built in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match crate::core::pool::Pool::open(&config.pool, &config.state_dir, settings.clone()) {
        Ok(pool) => Ok(core.with_pool(pool)),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the app pool");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

#[cfg(not(feature = "pool"))]
fn with_pool(core: Core, config: &Config, _settings: &ImportSettings) -> Result<Core, ExitCode> {
    if config.pool.store.is_some() || !config.pool.servers.is_empty() {
        tracing::warn!("[pool] is configured but this gantry was built without the pool feature");
    }
    Ok(core)
}

/// The apps event bus, sized by `http.sse_queue_events`.
fn gantry_events(config: &Config) -> crate::core::events::EventBus {
    crate::core::events::EventBus::new(config.http.sse_queue_events)
}

/// The Intervirt agent, when a listener speaks its dialect: the dataplane is started and
/// the stored topology re-applied before anything is served.
async fn start_intervirt(
    config: &Config,
    engine: Arc<dyn ContainerEngine>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Option<Arc<IntervirtAgent>>, ExitCode> {
    if !config
        .listeners
        .iter()
        .any(|l| l.dialect == config::Dialect::Intervirt)
    {
        return Ok(None);
    }
    let c = &config.intervirt;
    let state_dir = config.state_dir.join("intervirt");
    let power: Arc<dyn Power> = match c.power {
        PowerBackend::Logind => Arc::new(LogindPower),
        PowerBackend::Reboot => Arc::new(SyscallPower),
        PowerBackend::None => Arc::new(NoPower),
        PowerBackend::Record => Arc::new(RecordingPower {
            file: state_dir.join("power-requests.log"),
        }),
    };
    let settings = AgentSettings {
        state_dir,
        netns: c.netns.clone(),
        upgrade_command: c.upgrade_command.clone(),
        upgrade_timeout: c.upgrade_timeout,
        pull_on_update: c.pull_on_update,
        stop_timeout_secs: c.stop_timeout_secs,
        strict_client: c.strict_client,
    };
    let agent = match IntervirtAgent::open(settings, engine, power) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the Intervirt network dataplane");
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    agent.start_up(stop).await;
    tracing::info!(power = ?c.power, "Intervirt agent ready");
    Ok(Some(agent))
}

/// The duxcore services, when a listener speaks that dialect (its core key was read with the
/// configuration), their interrupted operations recovered.
async fn duxcore_services(
    config: &Config,
    engine: Arc<dyn ContainerEngine>,
    view: Arc<LiveView>,
) -> Result<Option<Arc<crate::core::services::Services>>, ExitCode> {
    use crate::core::services::{CoreKey, FetchLimits, ServiceSettings, Services, UnpackLimits};
    let d = &config.duxcore;
    let Some(key) = d.corekey.clone() else {
        return Ok(None);
    };
    let key = CoreKey::new(&d.corekey_file, key);
    let bundle = crate::core::apps::bundle::BundleLimits::default();
    let settings = ServiceSettings {
        dir: config.state_dir.join("duxcore"),
        fetch: FetchLimits {
            max_bytes: d.bind_contents_max_bytes,
            timeout: d.bind_contents_timeout,
        },
        unpack: UnpackLimits {
            max_bytes: d.bind_contents_max_unpacked_bytes,
            max_entries: d.bind_contents_max_entries,
            max_ratio: bundle.max_ratio,
            ratio_min_bytes: bundle.ratio_min_bytes,
        },
        max_image_bytes: d.max_image_bytes,
    };
    let services = Services::new(engine, view, settings, key).map_err(|e| {
        tracing::error!(error = %e, "cannot open the duxcore services");
        ExitCode::from(EXIT_FAILURE)
    })?;
    if let Err(e) = services.recover().await {
        tracing::warn!(error = %e, "cannot recover interrupted service operations");
    }
    Ok(Some(Arc::new(services)))
}

/// SIGHUP reads the duxcore core key file again (a failure keeps the key in use).
fn spawn_reload_on_hangup(core: Arc<Core>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(services) = &core.services else {
                continue;
            };
            let path = services.key().path().display().to_string();
            match services.key().reload() {
                Ok(()) => tracing::info!(file = %path, "core key read again"),
                Err(e) => tracing::error!(error = %e, "core key kept: cannot read it again"),
            }
        }
    });
}

/// The Flow Manager, when a listener speaks its dialect: its containers' sockets are served
/// again (kept across a restart under systemd) before anything is served.
async fn start_flow(
    config: &Config,
    engine: Arc<dyn ContainerEngine>,
    view: Arc<LiveView>,
    stop: CancellationToken,
) -> Result<Option<Arc<crate::core::flow::FlowManager>>, ExitCode> {
    if !config
        .listeners
        .iter()
        .any(|l| l.dialect == config::Dialect::FlowManager)
    {
        return Ok(None);
    }
    let dir = config.state_dir.join("flowmanager");
    let flow =
        crate::core::flow::FlowManager::new(engine, view, config.flow.clone(), &dir, stop.clone());
    let flow = match flow {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the Flow Manager");
            return Err(ExitCode::from(EXIT_FAILURE));
        }
    };
    flow.start_up(stop).await;
    tracing::info!(socket_dir = %config.flow.socket_dir.display(), "Flow Manager ready");
    Ok(Some(flow))
}

fn import_settings(config: &Config, listeners: &[std::net::SocketAddr]) -> ImportSettings {
    let mut s = ImportSettings::default();
    let a = &config.apps;
    s.policy = a.compose.clone();
    // gantry's own listeners, as bound (a port 0 is known only now).
    s.policy.reserved = listeners.to_vec();
    if let Some(n) = a.max_bundle_bytes {
        s.limits.max_zip_bytes = n;
    }
    if let Some(n) = a.reserve_bytes {
        s.reserve_bytes = n;
    }
    s
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; waiting for ctrl-c");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
