//! The guest's system upgrade: one command, its output streamed line by line.
//!
//! The command runs in its own process group on plain threads (reading pipes blocks), and its
//! lines reach the async side through a bounded channel. A timeout kills the whole group.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{AgentError, AgentResult, ProgressSink};

/// Longest output line passed on; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;

/// Which command `update` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeCommand {
    /// apt, apk or opkg, whichever the guest has (checked when `update` runs).
    Auto,
    /// No system upgrade; `update` only updates the containers.
    None,
    /// This program and arguments.
    Argv(Vec<String>),
}

impl UpgradeCommand {
    /// A preset name (`auto`, `none`, `apt`, `apk`, `opkg`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(UpgradeCommand::Auto),
            "none" => Some(UpgradeCommand::None),
            "apt" | "apk" | "opkg" => Some(UpgradeCommand::Argv(preset_argv(name))),
            _ => None,
        }
    }

    pub fn resolve(&self) -> Option<Vec<String>> {
        match self {
            UpgradeCommand::Argv(v) => Some(v.clone()),
            UpgradeCommand::None => None,
            UpgradeCommand::Auto => ["apt", "apk", "opkg"]
                .into_iter()
                .find(|tool| {
                    let bin = if *tool == "apt" { "apt-get" } else { tool };
                    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                        .iter()
                        .any(|dir| Path::new(dir).join(bin).exists())
                })
                .map(preset_argv),
        }
    }
}

fn preset_argv(tool: &str) -> Vec<String> {
    let script = match tool {
        "apt" => {
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y \
             -o Dpkg::Options::=--force-confold upgrade"
        }
        "apk" => "apk update && apk upgrade",
        _ => "opkg update && opkg list-upgradable | cut -d ' ' -f 1 | xargs -r opkg upgrade",
    };
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Runs `argv`, reporting each output line (stdout and stderr) with a fraction that grows
/// from `from` towards `to`. A non-zero exit, a failure to start or the timeout is a
/// [`AgentError::Command`] that names the last lines.
pub async fn run(
    argv: &[String],
    timeout: Duration,
    progress: &ProgressSink,
    from: f64,
    to: f64,
) -> AgentResult<()> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| AgentError::Command("the upgrade command is empty".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| AgentError::Command(format!("cannot run {program}: {e}")))?;
    let pid = child.id();
    let (lines_tx, mut lines) = mpsc::channel::<String>(64);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, lines_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, lines_tx.clone()));
    }
    drop(lines_tx);
    let (status_tx, status_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("gantry-upgrade".into())
        .spawn(move || {
            let status = child.wait();
            // The pipes close when the group ends; join the readers so no line is lost.
            for r in readers {
                let _ = r.join();
            }
            let _ = status_tx.send(status);
        })
        .map_err(|e| AgentError::Command(format!("cannot wait for {program}: {e}")))?;

    let mut tail: Vec<String> = Vec::new();
    let mut count = 0u64;
    let relay = async {
        while let Some(line) = lines.recv().await {
            count += 1;
            // Approaches `to` without reaching it; the total is unknown.
            let fraction = from + (to - from) * (count as f64 / (count as f64 + 50.0));
            progress.report(fraction, line.clone()).await;
            tail.push(line);
            if tail.len() > 5 {
                tail.remove(0);
            }
        }
    };
    if tokio::time::timeout(timeout, relay).await.is_err() {
        kill_group(pid);
        return Err(AgentError::Command(format!(
            "{program} did not finish within {} s and was killed",
            timeout.as_secs()
        )));
    }
    let status = match tokio::time::timeout(Duration::from_secs(30), status_rx).await {
        Ok(Ok(Ok(s))) => s,
        Ok(Ok(Err(e))) => return Err(AgentError::Command(format!("{program}: {e}"))),
        _ => {
            kill_group(pid);
            return Err(AgentError::Command(format!(
                "{program} closed its output but did not exit; killed"
            )));
        }
    };
    if status.success() {
        return Ok(());
    }
    let how = match status.code() {
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".to_string(),
    };
    let last = if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" | "))
    };
    Err(AgentError::Command(format!(
        "{} {how}{last}",
        argv.join(" ")
    )))
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match read_line_capped(&mut reader, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_string();
                    if tx.blocking_send(text).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Reads one line, keeping at most [`MAX_LINE`] bytes of it; returns the bytes consumed.
fn read_line_capped<R: BufRead>(r: &mut R, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        r.consume(n);
        consumed += n;
        if done {
            return Ok(consumed);
        }
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // The child leads its own process group (`process_group(0)`): its id names the group.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    async fn collect(argv: Vec<String>, timeout: Duration) -> (AgentResult<()>, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let sink = ProgressSink::new(tx);
        let result = run(&argv, timeout, &sink, 0.0, 0.5).await;
        drop(sink);
        let mut lines = Vec::new();
        while let Some(p) = rx.recv().await {
            assert!((0.0..0.5).contains(&p.fraction));
            lines.push(p.text);
        }
        (result, lines)
    }

    #[tokio::test]
    async fn streams_both_outputs_and_reports_failure() {
        let (r, lines) = collect(
            sh("echo one; echo two >&2; echo three"),
            Duration::from_secs(60),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
        lines
            .iter()
            .for_each(|l| assert!(["one", "two", "three"].contains(&l.as_str())));
        assert_eq!(lines.len(), 3);
        let (r, _) = collect(sh("echo broken; exit 3"), Duration::from_secs(60)).await;
        let e = r.unwrap_err();
        assert!(
            matches!(&e, AgentError::Command(m) if m.contains("status 3") && m.contains("broken")),
            "{e:?}"
        );
        let (r, _) = collect(vec!["/nonexistent/upgrade".into()], Duration::from_secs(60)).await;
        assert!(matches!(r, Err(AgentError::Command(_))));
    }

    #[tokio::test]
    async fn long_lines_are_capped_and_the_timeout_kills_the_group() {
        let (r, lines) = collect(
            sh("head -c 10000 /dev/zero | tr '\\0' x; echo"),
            Duration::from_secs(60),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(lines[0].len(), MAX_LINE);
        let (r, _) = collect(
            sh("echo start; sleep 600 & sleep 600"),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(AgentError::Command(m)) if m.contains("killed")));
    }

    #[test]
    fn presets() {
        assert_eq!(UpgradeCommand::preset("none"), Some(UpgradeCommand::None));
        assert!(
            matches!(UpgradeCommand::preset("apk"), Some(UpgradeCommand::Argv(v)) if v[2].starts_with("apk update"))
        );
        assert_eq!(UpgradeCommand::preset("yum"), None);
        assert_eq!(UpgradeCommand::None.resolve(), None);
    }
}
