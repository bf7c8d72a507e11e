//! `gantry check`, after `iotedge check`: is this installation ready to run apps? Each
//! check is ok, a warning or an error with a hint saying what to do; the exit status is 1
//! when any check is an error. It reads only, and works whether or not the daemon runs
//! (then the listener checks say so).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hyper::Method;
use serde::Serialize;

use super::client::Client;
use super::output::{json, print};
use super::progress::size;
use super::tls::TlsClient;
use super::Exit;
use crate::config::{self, Config, ProcessEnv, Source, Tokens};
use crate::core::docker::DockerEngine;
use crate::core::engine::ContainerEngine;
use crate::core::network::consistency;
use crate::core::network::DataplaneConfig;

mod dialects;

/// How long a check waits for the daemon or Docker.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warning,
    Error,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
struct Finding {
    check: String,
    status: Level,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, check: &str, status: Level, message: String, hint: Option<&str>) {
        self.0.push(Finding {
            check: check.to_string(),
            status,
            message,
            hint: hint.map(str::to_string),
        });
    }
    fn ok(&mut self, check: &str, message: String) {
        self.add(check, Level::Ok, message, None);
    }
    fn warn(&mut self, check: &str, message: String, hint: &str) {
        self.add(check, Level::Warning, message, Some(hint));
    }
    fn error(&mut self, check: &str, message: String, hint: &str) {
        self.add(check, Level::Error, message, Some(hint));
    }
}

pub async fn run(config: Option<&Path>, as_json: bool) -> Exit {
    let mut report = Report::default();
    if let Some(c) = configuration(&mut report, config) {
        listeners(&mut report, &c).await;
        let docker_root = docker(&mut report, &c).await;
        let reserve = c.apps.reserve_bytes.unwrap_or(256 << 20);
        disk(&mut report, "disk: state directory", &c.state_dir, reserve);
        if let Some(root) = docker_root {
            disk(
                &mut report,
                "disk: Docker data root",
                Path::new(&root),
                reserve,
            );
        }
        let has = |d: config::Dialect| c.listeners.iter().any(|l| l.dialect == d);
        if has(config::Dialect::Distillery) {
            snapshots_disk(&mut report, &c, reserve);
        }
        dialects::secrets(&mut report, &c);
        dialects::tls(&mut report, &c);
        if has(config::Dialect::FlowManager) {
            let unit = dialects::UnitSandbox::of_gantry();
            dialects::flow_socket_dir(&mut report, &c.flow.socket_dir, unit.as_ref());
        }
        let intervirt = has(config::Dialect::Intervirt);
        nftables(&mut report, intervirt);
        if intervirt {
            dataplane(&mut report, &c).await;
        }
    }
    clock(&mut report);
    let failed = report.0.iter().any(|f| f.status == Level::Error);
    let shown = if as_json {
        json(&report.0)
    } else {
        print(&render(&report.0))
    };
    if shown.is_err() || failed {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    for f in findings {
        let tag = match f.status {
            Level::Ok => "ok     ",
            Level::Warning => "warning",
            Level::Error => "ERROR  ",
        };
        out.push_str(&format!("{tag}  {:width$}  {}\n", f.check, f.message));
        if let Some(h) = &f.hint {
            out.push_str(&format!("{:w$}hint: {h}\n", "", w = width + 11));
        }
    }
    let count = |l| findings.iter().filter(|f| f.status == l).count();
    out.push_str(&format!(
        "\n{} checks: {} ok, {} warnings, {} errors\n",
        findings.len(),
        count(Level::Ok),
        count(Level::Warning),
        count(Level::Error)
    ));
    out
}

fn configuration(report: &mut Report, path: Option<&Path>) -> Option<Config> {
    let source = match path {
        Some(p) => Source::Explicit(p),
        None => Source::Default,
    };
    let origin = path.map_or_else(
        || {
            if Path::new(config::DEFAULT_CONFIG_PATH).exists() {
                config::DEFAULT_CONFIG_PATH.to_string()
            } else {
                "built-in defaults".to_string()
            }
        },
        |p| p.display().to_string(),
    );
    // Files this user may not read are the secret checks' to report (as warnings).
    match Config::load_with(source, &ProcessEnv, Tokens::IfReadable) {
        Ok(c) => {
            let n = c.listeners.len();
            report.ok("configuration", format!("{origin}: valid, {n} listener(s)"));
            Some(c)
        }
        Err(e) => {
            let hint = "fix the file (`gantry check-config` shows what it resolves to); \
                        systemd/gantry.toml.example documents every key";
            report.error("configuration", e.to_string(), hint);
            None
        }
    }
}

async fn listeners(report: &mut Report, c: &Config) {
    for l in &c.listeners {
        let name = format!("listener {} {}", l.dialect, l.address);
        if l.address.port() == 0 {
            let why = "port 0: the port is chosen at start and cannot be checked".to_string();
            report.warn(&name, why, "set a fixed port to check this listener");
            continue;
        }
        match probe(l).await {
            Ok(answer) => listener_answer(report, &name, answer),
            Err(e) => report.error(
                &name,
                format!("not answering: {e}"),
                "start gantry (`systemctl start gantry`); `journalctl -u gantry` says why it stopped",
            ),
        }
    }
}

/// What a listener said: `/healthz`'s status, and the version from `/gantry/status` when
/// the CLI has the listener's credentials.
enum Answer {
    Http {
        status: String,
        version: Option<String>,
    },
    /// A TLS listener accepts connections (its certificate file cannot be read, so the CLI
    /// cannot ask it more).
    Tls,
}

#[derive(serde::Deserialize)]
struct Health {
    status: String,
}

#[derive(serde::Deserialize)]
struct Status {
    version: String,
}

async fn probe(l: &config::Listener) -> Result<Answer, String> {
    let token = super::client::listener_token(l).map(str::to_string);
    let client = Client::at(l.address, String::new(), token);
    // A TLS listener is asked over TLS, trusting its own certificate, when that is readable.
    let tls = l
        .tls
        .as_ref()
        .map(|t| TlsClient::pinned(&t.cert, client.addr).ok());
    let accept_only = matches!(tls, Some(None));
    let client = match tls.flatten() {
        Some(tls) => client.with_tls(tls),
        None => client,
    };
    let call = async {
        if accept_only {
            client.connect().await?;
            return Ok(Answer::Tls);
        }
        let resp = client.call(Method::GET, "/healthz").await?;
        let health = super::client::json_of::<Health>(resp).await?;
        let status = health.map_or_else(|| "empty answer".into(), |h| h.status);
        // Behind the listener's auth: without its credentials the version stays unknown.
        let version = match client.call(Method::GET, crate::server::STATUS_PATH).await {
            Ok(resp) => super::client::json_of::<Status>(resp)
                .await
                .ok()
                .flatten()
                .map(|s| s.version),
            Err(_) => None,
        };
        Ok::<_, super::client::CliError>(Answer::Http { status, version })
    };
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
    }
}

fn listener_answer(report: &mut Report, name: &str, answer: Answer) {
    let ours = env!("CARGO_PKG_VERSION");
    let (status, version) = match answer {
        Answer::Tls => {
            let msg = "accepts connections (TLS: its certificate file is not readable, so \
                       not asked over HTTP)"
                .to_string();
            return report.ok(name, msg);
        }
        Answer::Http { status, version } => (status, version),
    };
    match version {
        Some(v) if v != ours => report.warn(
            name,
            format!("answers, but runs gantry {v} (this binary is {ours})"),
            "restart gantry after an upgrade: `systemctl restart gantry`",
        ),
        Some(v) => report.ok(name, format!("answers (gantry {v}, {status})")),
        None => report.ok(
            name,
            format!(
                "answers ({status}); its version is not known: /gantry/status did not \
                 answer this user (the listener's credentials, or its allowed_peers)"
            ),
        ),
    }
}

/// Docker's reachability and version; its data root when it answers.
async fn docker(report: &mut Report, c: &Config) -> Option<String> {
    let engine = DockerEngine::new(&c.docker_host, TIMEOUT, TIMEOUT);
    let hint = "start Docker (`systemctl start docker`) or set docker_host in the configuration";
    let version = match tokio::time::timeout(TIMEOUT, engine.version()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            report.error("docker", format!("{}: {e}", c.docker_host), hint);
            return None;
        }
        Err(_) => {
            report.error(
                "docker",
                format!("{}: no answer within 5s", c.docker_host),
                hint,
            );
            return None;
        }
    };
    let msg = format!(
        "Docker {} (API {}) at {}",
        version.version, version.api_version, c.docker_host
    );
    if api_below(&version.api_version, 1, 41) {
        report.warn(
            "docker",
            msg,
            "gantry needs Docker 20.10 (API 1.41) or newer",
        );
    } else {
        report.ok("docker", msg);
    }
    tokio::time::timeout(TIMEOUT, engine.root_dir())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

fn api_below(v: &str, major: u32, minor: u32) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) < (major, minor)
}

/// Free space where `path` (or its nearest existing parent) lives.
fn disk(report: &mut Report, name: &str, path: &Path, reserve: u64) {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = match nix::sys::statvfs::statvfs(existing) {
        Ok(st) => st,
        Err(e) => {
            let msg = format!("{}: {e}", path.display());
            report.warn(name, msg, "run `gantry check` as root to check every path");
            return;
        }
    };
    let frag = st.fragment_size() as u64;
    let free = st.blocks_available() as u64 * frag;
    let total = st.blocks() as u64 * frag;
    let msg = format!(
        "{} free of {} ({})",
        size(free),
        size(total),
        path.display()
    );
    let hint = "free space: remove unused apps and images (`docker image prune`)";
    if free < reserve {
        report.error(
            name,
            format!("{msg}: below the reserve of {}", size(reserve)),
            hint,
        );
    } else if free < (1 << 30).max(4 * reserve) {
        report.warn(name, msg, hint);
    } else {
        report.ok(name, msg);
    }
}

/// Free space for snapshots and backups, when they go to another file system than the
/// state directory (checked above).
fn snapshots_disk(report: &mut Report, c: &Config, reserve: u64) {
    use std::os::unix::fs::MetadataExt;
    let device = |p: &Path| {
        p.ancestors()
            .find_map(|a| std::fs::metadata(a).ok())
            .map(|m| m.dev())
    };
    if device(&c.snapshots.dir) != device(&c.state_dir) {
        disk(report, "disk: snapshots", &c.snapshots.dir, reserve);
    }
}

fn nftables(report: &mut Report, needed: bool) {
    let version = std::process::Command::new("nft").arg("--version").output();
    let listed = std::process::Command::new("nft")
        .args(["-j", "list", "tables"])
        .output();
    let problem = match (&version, &listed) {
        (Err(e), _) => Some(format!("nft: {e}")),
        (_, Ok(o)) if o.status.success() => None,
        (_, Ok(o)) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        (_, Err(e)) => Some(e.to_string()),
    };
    let name = "nftables";
    match (problem, needed) {
        (None, _) => {
            let v = version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            report.ok(name, format!("usable ({})", v.unwrap_or_default()));
        }
        (Some(p), true) => report.error(
            name,
            p,
            "the Intervirt dataplane needs nft with JSON support (Debian: `apt install nftables`) and root",
        ),
        (Some(p), false) => report.warn(
            name,
            p,
            "only the Intervirt dataplane needs nftables; install it (`apt install nftables`) if you use one",
        ),
    }
}

async fn dataplane(report: &mut Report, c: &Config) {
    let config = DataplaneConfig {
        state_dir: c.state_dir.join("intervirt"),
        netns: c.intervirt.netns.clone(),
    };
    let name = "intervirt dataplane";
    let hint = "restart gantry to re-apply the stored topology: `systemctl restart gantry`";
    let checked = tokio::task::spawn_blocking(move || consistency::check(&config)).await;
    let result = match checked {
        Ok(r) => r,
        Err(e) => {
            report.error(name, e.to_string(), hint);
            return;
        }
    };
    match result {
        Err(e) => report.error(name, e.to_string(), "run `gantry check` as root"),
        Ok(c) if c.kernel.is_none() && c.containers > 0 => report.error(
            name,
            format!(
                "{} containers stored, but gantry's nftables table is missing",
                c.containers
            ),
            hint,
        ),
        Ok(c) if !c.differences().is_empty() => report.error(
            name,
            format!(
                "the kernel differs from the journal: {}",
                c.differences().join("; ")
            ),
            hint,
        ),
        Ok(c) => {
            let n: usize = c.stored.values().sum();
            report.ok(
                name,
                format!(
                    "{} containers; the nftables table matches the journal ({n} elements)",
                    c.containers
                ),
            );
        }
    }
}

/// The clock is sane when it is not behind this binary's installation, and synchronised
/// when systemd says so.
fn clock(report: &mut Report) {
    let now = SystemTime::now();
    let installed = std::env::current_exe()
        .and_then(|p| std::fs::metadata(p)?.modified())
        .ok();
    if let Some(t) = installed.filter(|t| now + Duration::from_secs(3600) < *t) {
        let behind = t.duration_since(now).unwrap_or_default();
        let msg = format!(
            "the clock is {} behind this binary's file time",
            super::progress::duration(behind.as_secs_f64())
        );
        report.error(
            "clock",
            msg,
            "set the time (enable NTP: `timedatectl set-ntp true`)",
        );
        return;
    }
    let name = "clock";
    match ntp_synchronized() {
        Some(true) => report.ok(name, "synchronized (NTP)".into()),
        Some(false) => report.warn(
            name,
            "not synchronized".into(),
            "enable NTP (`timedatectl set-ntp true`): logs, certificates and schedules need the right time",
        ),
        None => report.ok(name, "plausible (no NTP status available)".into()),
    }
}

fn ntp_synchronized() -> Option<bool> {
    if PathBuf::from("/run/systemd/timesync/synchronized").exists() {
        return Some(true);
    }
    let out = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim() == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_each_check_with_its_hint_and_a_summary() {
        let mut r = Report::default();
        r.ok("docker", "Docker 20.10".into());
        r.error(
            "listener transfer 127.0.0.1:1",
            "not answering".into(),
            "start gantry",
        );
        let text = render(&r.0);
        assert!(text.starts_with("ok       docker"), "{text}");
        assert!(
            text.contains("ERROR    listener transfer 127.0.0.1:1  not answering\n"),
            "{text}"
        );
        assert!(text.contains("hint: start gantry\n"), "{text}");
        assert!(
            text.ends_with("2 checks: 1 ok, 0 warnings, 1 errors\n"),
            "{text}"
        );
        assert!(api_below("1.40", 1, 41) && !api_below("1.41", 1, 41) && !api_below("2.0", 1, 41));
    }

    #[test]
    fn a_listeners_version_is_judged_when_it_is_known() {
        let ours = env!("CARGO_PKG_VERSION");
        let http = |v: Option<&str>| Answer::Http {
            status: "ok".into(),
            version: v.map(str::to_string),
        };
        let mut r = Report::default();
        for answer in [
            http(Some(ours)),
            http(Some("0.0.0-old")),
            http(None),
            Answer::Tls,
        ] {
            listener_answer(&mut r, "listener", answer);
        }
        let levels: Vec<Level> = r.0.iter().map(|f| f.status).collect();
        let ok = Level::Ok;
        assert_eq!(levels, [ok, Level::Warning, ok, ok]);
        assert!(r.0[0].message.contains(&format!("gantry {ours}")));
        assert!(r.0[2].message.contains("not known"), "{}", r.0[2].message);
        assert!(r.0[3].message.contains("TLS"), "{}", r.0[3].message);
    }

    #[test]
    fn disk_space_below_the_reserve_is_an_error() {
        let mut r = Report::default();
        disk(
            &mut r,
            "disk",
            Path::new("/nonexistent/below/root"),
            u64::MAX,
        );
        assert_eq!(r.0[0].status, Level::Error);
        assert!(r.0[0].message.contains("free of"), "{}", r.0[0].message);
        disk(&mut r, "disk", Path::new("/"), 0);
        assert_ne!(r.0[1].status, Level::Error);
    }
}
