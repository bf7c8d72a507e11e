//! Running as a systemd service: journald logging, sd_notify READY/STATUS/STOPPING, and a
//! watchdog that only pings while gantry's own health check passes.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

use crate::core::health::EngineStatus;

/// journald when systemd connected our output to the journal and the journal answers;
/// stderr otherwise.
pub fn init_logging(level: tracing::Level) {
    let filter = LevelFilter::from_level(level);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(journald.with_syslog_identifier("gantry".into()))
                .with(filter)
                .init();
            return;
        }
    }
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .with(filter)
        .init();
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn notify_ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Keeps systemd's STATUS= line in step with the container engine's reachability.
pub fn spawn_status_updates(
    mut engine: watch::Receiver<EngineStatus>,
    listening: String,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let line = format!("{listening}; {}", engine.borrow_and_update().summary());
            notify(&[NotifyState::Status(&line)]);
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = engine.changed() => if changed.is_err() { break },
            }
        }
    });
}

/// When systemd enabled the watchdog, pings at half its period, but only after every
/// listener answered its own `/healthz` over loopback: a wedged accept loop or HTTP stack
/// stops the pings, and systemd restarts us.
/// A TLS listener is probed by connecting only (the probe speaks no TLS).
pub fn spawn_watchdog(addrs: Vec<(SocketAddr, bool)>, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let interval = (period / 2).max(Duration::from_millis(100));
    let probe_timeout = interval.min(Duration::from_secs(5));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut healthy = true;
            for (addr, tls) in &addrs {
                if let Err(e) = self_probe(*addr, *tls, probe_timeout).await {
                    tracing::warn!(%addr, error = %e, "health self-check failed; withholding watchdog ping");
                    healthy = false;
                }
            }
            if healthy {
                notify(&[NotifyState::Watchdog]);
            }
        }
    });
}

/// A minimal HTTP/1.1 GET of `/healthz` against our own listener.
async fn self_probe(addr: SocketAddr, tls: bool, limit: Duration) -> Result<(), String> {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let probe = async {
        let mut s = TcpStream::connect(target)
            .await
            .map_err(|e| e.to_string())?;
        if tls {
            return Ok(());
        }
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        if &head == b"HTTP/1.1 200" {
            Ok(())
        } else {
            Err(format!(
                "unexpected answer {:?}",
                String::from_utf8_lossy(&head)
            ))
        }
    };
    tokio::time::timeout(limit, probe)
        .await
        .map_err(|_| "timed out".to_string())?
}
