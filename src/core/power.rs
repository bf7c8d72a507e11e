//! Powering the machine off or rebooting it.
//!
//! [`LogindPower`] asks systemd-logind over D-Bus (an orderly shutdown: units stop, file
//! systems unmount) and falls back to `sync()` + `reboot(2)` when logind cannot be reached.
//! [`SyscallPower`] goes straight to `reboot(2)`. [`RecordingPower`] only appends the request
//! to a file: tests select it, and nothing else; [`NoPower`] refuses. The configuration
//! default is [`NoPower`], so a configuration that forgets the key can never power anything
//! off.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl PowerAction {
    pub fn name(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "poweroff",
            PowerAction::Reboot => "reboot",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PowerError(pub String);

#[async_trait]
pub trait Power: Send + Sync + 'static {
    /// Starts the action. On success the machine goes down soon after (or, for the
    /// syscall backend, this never returns).
    async fn execute(&self, action: PowerAction) -> Result<(), PowerError>;
    /// Refuses early when the backend can never act, so that a client gets an error before
    /// its containers are stopped for nothing.
    fn available(&self) -> Result<(), PowerError> {
        Ok(())
    }
    fn name(&self) -> &'static str;
}

/// systemd-logind's `PowerOff(false)` / `Reboot(false)` on the system bus, then the syscall.
pub struct LogindPower;

impl LogindPower {
    async fn call(action: PowerAction) -> Result<(), PowerError> {
        let method = match action {
            PowerAction::PowerOff => "PowerOff",
            PowerAction::Reboot => "Reboot",
        };
        let fail = |e: zbus::Error| PowerError(format!("logind {method}: {e}"));
        let connection = zbus::Connection::system().await.map_err(fail)?;
        // interactive = false: never wait for a polkit password prompt.
        connection
            .call_method(
                Some("org.freedesktop.login1"),
                "/org/freedesktop/login1",
                Some("org.freedesktop.login1.Manager"),
                method,
                &(false,),
            )
            .await
            .map_err(fail)?;
        Ok(())
    }
}

#[async_trait]
impl Power for LogindPower {
    async fn execute(&self, action: PowerAction) -> Result<(), PowerError> {
        let limit = std::time::Duration::from_secs(10);
        let result = match tokio::time::timeout(limit, Self::call(action)).await {
            Ok(r) => r,
            Err(_) => Err(PowerError("logind did not answer within 10 s".into())),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "logind failed; falling back to reboot(2)");
                SyscallPower.execute(action).await
            }
        }
    }

    fn name(&self) -> &'static str {
        "logind"
    }
}

/// `sync()` then `reboot(2)`: no orderly shutdown of other services, so only a last resort.
pub struct SyscallPower;

#[async_trait]
impl Power for SyscallPower {
    async fn execute(&self, action: PowerAction) -> Result<(), PowerError> {
        use nix::sys::reboot::{reboot, RebootMode};
        let mode = match action {
            PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        };
        tokio::task::spawn_blocking(move || {
            nix::unistd::sync();
            // reboot(2) does not return when it succeeds.
            let Err(e) = reboot(mode);
            Err(PowerError(format!(
                "reboot(2): {}",
                std::io::Error::from(e)
            )))
        })
        .await
        .map_err(|e| PowerError(e.to_string()))?
    }

    fn name(&self) -> &'static str {
        "reboot"
    }
}

/// Writes one line per request to a file and does nothing else (for tests).
pub struct RecordingPower {
    pub file: PathBuf,
}

#[async_trait]
impl Power for RecordingPower {
    async fn execute(&self, action: PowerAction) -> Result<(), PowerError> {
        let fail = |e: std::io::Error| PowerError(format!("{}: {e}", self.file.display()));
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(fail)?;
        writeln!(f, "{}", action.name()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        tracing::warn!(action = action.name(), file = %self.file.display(), "power action recorded, not executed");
        Ok(())
    }

    fn name(&self) -> &'static str {
        "record"
    }
}

/// Power control switched off.
pub struct NoPower;

#[async_trait]
impl Power for NoPower {
    async fn execute(&self, _action: PowerAction) -> Result<(), PowerError> {
        Err(self.available().unwrap_err())
    }

    fn available(&self) -> Result<(), PowerError> {
        Err(PowerError(
            "power control is disabled on this guest (set [intervirt] power = \"logind\")".into(),
        ))
    }

    fn name(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recording_power_only_writes_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = RecordingPower {
            file: dir.path().join("sub/power.log"),
        };
        p.execute(PowerAction::PowerOff).await.unwrap();
        p.execute(PowerAction::Reboot).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("sub/power.log")).unwrap();
        assert_eq!(text, "poweroff\nreboot\n");
    }

    #[tokio::test]
    async fn no_power_refuses() {
        assert!(NoPower.available().is_err());
        assert!(NoPower.execute(PowerAction::Reboot).await.is_err());
    }
}
