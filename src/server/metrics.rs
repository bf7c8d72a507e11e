//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4), on listeners
//! that opt in (`metrics = true`), behind the listener's auth. Names follow the Prometheus
//! conventions: a `gantry_` prefix, base units (`_seconds`, `_bytes`), `_total` counters,
//! and the `process_*` names every client library uses.
//!
//! Every figure is process-wide, whichever listener is asked: the core's counters
//! (`core::metrics`), the tasks running, the apps by status (from the live view at scrape
//! time, bounded), Docker's reachability, and the connections and websocket sessions of
//! every listener by dialect (registered here by the server).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::dialect::{Dialect, LiveClients};
use super::ws::Sessions;
use crate::core::apps::lifecycle::AppStatus;
use crate::core::health::EngineStatus;
use crate::core::metrics::{self, Histogram};
use crate::core::tasks::{TaskInfo, TaskKind};
use crate::core::Core;

/// How long a scrape waits for the live view (rebuilt after a reconnect to Docker) to list
/// the apps before it answers without them.
const APPS_TIMEOUT: Duration = Duration::from_secs(5);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One listener's connections and websocket sessions.
pub struct ListenerStats {
    dialect: &'static str,
    open: AtomicU64,
    accepted: AtomicU64,
    sessions: Sessions,
    /// The listener's dialect, asked for the clients of its own session layer.
    served_by: Weak<dyn Dialect>,
}

static LISTENERS: Mutex<Vec<Arc<ListenerStats>>> = Mutex::new(Vec::new());

/// Registers a listener of `dialect` (served by `served_by`) whose websocket sessions are
/// `sessions`.
pub fn register(
    dialect: &'static str,
    sessions: Sessions,
    served_by: Weak<dyn Dialect>,
) -> Arc<ListenerStats> {
    let stats = Arc::new(ListenerStats {
        dialect,
        open: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        sessions,
        served_by,
    });
    let mut all = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    // Listeners of servers that stopped (tests run several) are dropped here.
    all.retain(|l| Arc::strong_count(l) > 1);
    all.push(stats.clone());
    stats
}

/// Counts one open connection until dropped.
pub struct OpenConnection(Arc<ListenerStats>);

impl ListenerStats {
    pub fn connection(self: &Arc<Self>) -> OpenConnection {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The whole exposition.
pub async fn render(core: &Core) -> String {
    let apps = tokio::time::timeout(APPS_TIMEOUT, core.apps.list()).await;
    let mut out = Exposition::default();
    out.gauge("gantry_build_info", "The running gantry's version.")
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    if let Ok(Ok(views)) = apps {
        app_statuses(&mut out, views.iter().map(|v| v.status));
    }
    operations(&mut out, core);
    docker(&mut out, &core.engine_health.current());
    listeners(&mut out);
    process(&mut out);
    out.text
}

fn app_statuses(out: &mut Exposition, statuses: impl Iterator<Item = AppStatus>) {
    let statuses: Vec<AppStatus> = statuses.collect();
    let mut m = out.gauge(
        "gantry_apps",
        "Stored apps by status (from the live view of Docker).",
    );
    for (name, status) in [
        ("running", AppStatus::Running),
        ("partially_running", AppStatus::PartiallyRunning),
        ("stopped", AppStatus::Stopped),
        ("unknown", AppStatus::Unknown),
    ] {
        let n = statuses.iter().filter(|s| **s == status).count();
        m.sample(&[("status", name)], n as f64);
    }
}

fn operations(out: &mut Exposition, core: &Core) {
    let ops = metrics::operations();
    let mut m = out.counter(
        "gantry_operations_total",
        "Long operations that ended, by kind (as in GET /api/tasks) and outcome.",
    );
    for (kind, outcome, h) in &ops {
        m.sample(
            &[("kind", kind), ("outcome", outcome.name())],
            h.count as f64,
        );
    }
    out.help(
        "gantry_operation_duration_seconds",
        "histogram",
        "How long long operations took, by kind and outcome.",
    );
    for (kind, outcome, h) in &ops {
        histogram(out, kind, outcome.name(), h);
    }
    running(out, &core.tasks.list());
}

/// Every kind, 0 when none runs: a series that vanishes reads as "unknown", not "none".
fn running(out: &mut Exposition, tasks: &[TaskInfo]) {
    let mut m = out.gauge("gantry_operations_running", "Long operations running now.");
    for kind in TaskKind::ALL {
        let n = tasks.iter().filter(|t| t.kind == kind).count();
        m.sample(&[("kind", kind.name())], n as f64);
    }
}

fn histogram(out: &mut Exposition, kind: &str, outcome: &str, h: &Histogram) {
    let name = "gantry_operation_duration_seconds";
    for (bound, n) in h.cumulative() {
        let le = bound.to_string();
        out.line(
            &format!("{name}_bucket"),
            &[("kind", kind), ("outcome", outcome), ("le", &le)],
            n as f64,
        );
    }
    let labels = [("kind", kind), ("outcome", outcome)];
    out.line(
        &format!("{name}_bucket"),
        &[("kind", kind), ("outcome", outcome), ("le", "+Inf")],
        h.count as f64,
    );
    out.line(&format!("{name}_sum"), &labels, h.sum_seconds);
    out.line(&format!("{name}_count"), &labels, h.count as f64);
}

fn docker(out: &mut Exposition, status: &EngineStatus) {
    out.gauge(
        "gantry_docker_up",
        "Whether Docker answered gantry's last probe (1) or not (0).",
    )
    .sample(&[], if status.is_reachable() { 1.0 } else { 0.0 });
    if let EngineStatus::Reachable(v) = status {
        out.gauge("gantry_docker_info", "The version of the Docker engine.")
            .sample(
                &[("version", &v.version), ("api_version", &v.api_version)],
                1.0,
            );
    }
    let (events, lag) = metrics::docker_events();
    out.counter(
        "gantry_docker_events_total",
        "Docker events applied to gantry's live view.",
    )
    .sample(&[], events as f64);
    if let Some(lag) = lag {
        out.gauge(
            "gantry_docker_event_lag_seconds",
            "Time from Docker recording the last event to gantry's live view applying it.",
        )
        .sample(&[], lag.as_secs_f64());
    }
}

/// One dialect's figures, summed over its listeners.
#[derive(Default)]
struct DialectFigures {
    open: u64,
    accepted: u64,
    /// Websocket sessions, Socket.IO clients on a websocket included.
    websockets: u64,
    socketio: Option<LiveClients>,
}

impl DialectFigures {
    fn add(&mut self, l: &ListenerStats) {
        let live = l.served_by.upgrade().and_then(|d| d.live_clients());
        self.open += l.open.load(Ordering::Relaxed);
        self.accepted += l.accepted.load(Ordering::Relaxed);
        self.websockets += l.sessions.open() as u64;
        if let Some(c) = live {
            self.websockets += c.websocket as u64;
            let sum = self.socketio.get_or_insert_with(LiveClients::default);
            sum.polling += c.polling;
            sum.websocket += c.websocket;
        }
    }
}

fn listeners(out: &mut Exposition) {
    // Several listeners may speak one dialect: their figures add up.
    let mut by_dialect: Vec<(&'static str, DialectFigures)> = Vec::new();
    for l in LISTENERS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        match by_dialect.iter_mut().find(|(d, _)| *d == l.dialect) {
            Some((_, f)) => f.add(l),
            None => {
                let mut f = DialectFigures::default();
                f.add(l);
                by_dialect.push((l.dialect, f));
            }
        }
    }
    type Figure = fn(&DialectFigures) -> u64;
    let families: [(&str, &str, &str, Figure); 3] = [
        (
            "gantry_http_connections",
            "gauge",
            "Open HTTP connections, by dialect.",
            |f| f.open,
        ),
        (
            "gantry_http_connections_total",
            "counter",
            "HTTP connections accepted, by dialect.",
            |f| f.accepted,
        ),
        (
            "gantry_websocket_sessions",
            "gauge",
            "Open websocket sessions, by dialect (Socket.IO clients on a websocket included).",
            |f| f.websockets,
        ),
    ];
    for (name, kind, help, figure) in families {
        out.help(name, kind, help);
        for (dialect, f) in &by_dialect {
            out.line(name, &[("dialect", dialect)], figure(f) as f64);
        }
    }
    let socketio: Vec<_> = by_dialect
        .iter()
        .filter_map(|(d, f)| Some((*d, f.socketio?)))
        .collect();
    if !socketio.is_empty() {
        let mut m = out.gauge(
            "gantry_socketio_clients",
            "Connected Socket.IO clients, by dialect and transport.",
        );
        for (dialect, c) in socketio {
            m.sample(
                &[("dialect", dialect), ("transport", "polling")],
                c.polling as f64,
            )
            .sample(
                &[("dialect", dialect), ("transport", "websocket")],
                c.websocket as f64,
            );
        }
    }
}

/// The standard `process_*` metrics, from /proc/self.
fn process(out: &mut Exposition) {
    let Some(p) = ProcStat::read() else {
        return;
    };
    let rows: [(&str, &str, &str, f64); 5] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.rss_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.vsize_bytes,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds,
        ),
    ];
    for (name, kind, help, value) in rows {
        out.help(name, kind, help);
        out.line(name, &[], value);
    }
}

/// What /proc says about this process.
struct ProcStat {
    cpu_seconds: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    start_time: f64,
    open_fds: f64,
}

impl ProcStat {
    fn read() -> Option<Self> {
        use nix::unistd::{sysconf, SysconfVar};
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces and parentheses).
        let f: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()? as f64;
        let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()? as f64;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Some(ProcStat {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            vsize_bytes: num(23)?,
            rss_bytes: num(24)? * page,
            start_time: boot + num(22)? / ticks,
            open_fds,
        })
    }
}

/// The text being written: `# HELP`/`# TYPE` once per family, then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

/// The samples of one family.
struct Family<'a> {
    out: &'a mut Exposition,
    name: &'static str,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.line(self.name, labels, value);
        self
    }
}

impl Exposition {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &'static str, help: &str) -> Family<'_> {
        self.help(name, "gauge", help);
        Family { out: self, name }
    }

    fn counter(&mut self, name: &'static str, help: &str) -> Family<'_> {
        self.help(name, "counter", help);
        Family { out: self, name }
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_escape_labels_and_write_numbers_as_prometheus_reads_them() {
        let mut out = Exposition::default();
        out.gauge("x_info", "Help.")
            .sample(&[("v", "a\"b\\c\nd")], 1.0)
            .sample(&[], 0.25);
        out.line("y", &[("le", "+Inf")], f64::INFINITY);
        assert_eq!(
            out.text,
            "# HELP x_info Help.\n# TYPE x_info gauge\nx_info{v=\"a\\\"b\\\\c\\nd\"} 1\n\
             x_info 0.25\ny{le=\"+Inf\"} +Inf\n"
        );
    }

    #[test]
    fn app_statuses_are_counted_for_every_status() {
        let mut out = Exposition::default();
        app_statuses(
            &mut out,
            [AppStatus::Running, AppStatus::Stopped, AppStatus::Running].into_iter(),
        );
        assert!(out.text.contains("gantry_apps{status=\"running\"} 2\n"));
        assert!(out
            .text
            .contains("gantry_apps{status=\"partially_running\"} 0\n"));
        assert!(out.text.contains("gantry_apps{status=\"stopped\"} 1\n"));
        assert!(out.text.contains("gantry_apps{status=\"unknown\"} 0\n"));
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        metrics::operation_ended("hist-test", metrics::Outcome::Ok, Duration::from_millis(70));
        let (_, _, h) = metrics::operations()
            .into_iter()
            .find(|(k, _, _)| *k == "hist-test")
            .unwrap();
        let mut out = Exposition::default();
        histogram(&mut out, "hist-test", "ok", &h);
        let t = &out.text;
        assert!(
            t.contains("{kind=\"hist-test\",outcome=\"ok\",le=\"0.05\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("{kind=\"hist-test\",outcome=\"ok\",le=\"0.1\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("le=\"+Inf\"} 1\n"), "{t}");
        assert!(t.contains(
            "gantry_operation_duration_seconds_count{kind=\"hist-test\",outcome=\"ok\"} 1\n"
        ));
    }

    /// A dialect with Socket.IO clients of its own: two polling, one on a websocket.
    struct SocketIoLike;

    #[async_trait::async_trait]
    impl Dialect for SocketIoLike {
        async fn serve(
            &self,
            _req: hyper::Request<hyper::body::Incoming>,
            _cx: super::super::Cx,
        ) -> crate::api::http::Response {
            unreachable!("never asked")
        }
        fn error(&self, status: hyper::StatusCode, _: &str, _: &str) -> crate::api::http::Response {
            crate::api::http::empty(status)
        }
        fn live_clients(&self) -> Option<LiveClients> {
            Some(LiveClients {
                polling: 2,
                websocket: 1,
            })
        }
    }

    #[test]
    fn socketio_clients_are_counted_by_transport_and_websockets_among_the_sessions() {
        let dialect: Arc<dyn Dialect> = Arc::new(SocketIoLike);
        let sessions = Sessions::new(4, tokio_util::sync::CancellationToken::new());
        let stats = register("metrics-test-sio", sessions, Arc::downgrade(&dialect));
        let open = stats.connection();
        let _also = stats.connection();
        drop(open);
        let mut out = Exposition::default();
        listeners(&mut out);
        let t = &out.text;
        for line in [
            "gantry_http_connections{dialect=\"metrics-test-sio\"} 1\n",
            "gantry_http_connections_total{dialect=\"metrics-test-sio\"} 2\n",
            "gantry_websocket_sessions{dialect=\"metrics-test-sio\"} 1\n",
            "gantry_socketio_clients{dialect=\"metrics-test-sio\",transport=\"polling\"} 2\n",
            "gantry_socketio_clients{dialect=\"metrics-test-sio\",transport=\"websocket\"} 1\n",
        ] {
            assert!(t.contains(line), "{line} not in\n{t}");
        }
        // Once the dialect is gone (its server stopped), it has no clients.
        drop(dialect);
        let mut out = Exposition::default();
        listeners(&mut out);
        let gone = "gantry_socketio_clients{dialect=\"metrics-test-sio\"";
        assert!(!out.text.contains(gone), "{}", out.text);
        drop(stats);
    }

    #[test]
    fn every_kind_has_a_running_gauge() {
        let mut out = Exposition::default();
        running(&mut out, &[]);
        for kind in TaskKind::ALL {
            let line = format!("gantry_operations_running{{kind=\"{}\"}} 0\n", kind.name());
            assert!(out.text.contains(&line), "{line} not in\n{}", out.text);
        }
    }

    #[test]
    fn process_figures_come_from_proc() {
        let p = ProcStat::read().expect("/proc/self is readable");
        assert!(p.rss_bytes > 0.0 && p.vsize_bytes >= p.rss_bytes);
        assert!(p.open_fds >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time <= now + 1.0 && p.start_time > now - 86400.0 * 365.0);
    }
}
