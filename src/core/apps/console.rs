//! An app's console: its containers' logs followed, and commands run in a service's
//! container with their stdin and output.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::lifecycle::{Apps, Run};
use super::AppId;
use crate::core::compose::ContainerStatus;
use crate::core::engine::{ExecState, LineStream};
use crate::core::{CoreError, CoreResult};

/// Lines of each container's past output shown before following it.
const LOG_TAIL: u64 = 100;

/// How long a cancelled command gets to end on SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);

impl Apps {
    /// Follows the logs of the app's containers (the last lines of each first), each line
    /// prefixed `name | ` as `docker-compose logs -f` does, until `cancel` fires or every
    /// container's output ended (the containers stopped).
    pub async fn follow_logs(&self, id: &AppId, run: Run<'_>) -> CoreResult<()> {
        let app = self.stored(id)?;
        let containers = self.containers(&app).await?;
        if containers.is_empty() {
            return Err(CoreError::Conflict(format!(
                "{id} has no containers: start it first"
            )));
        }
        let mut merged = self.prefixed_lines(containers, Some(LOG_TAIL));
        loop {
            tokio::select! {
                _ = run.cancel.cancelled() => return Ok(()),
                line = merged.next() => match line {
                    Some(Ok(l)) => (run.out)(&l.text),
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            }
        }
    }

    /// The last `lines` lines (all with None) of each of the app's containers, then their new
    /// lines as they come, prefixed as [`Apps::logs`] does (`docker-compose logs -f`). The
    /// stream ends when every container has stopped (at once when the app has none).
    pub async fn log_stream(&self, id: &AppId, lines: Option<u64>) -> CoreResult<LineStream> {
        let app = self.stored(id)?;
        let containers = self.containers(&app).await?;
        Ok(self.prefixed_lines(containers, lines))
    }

    /// The containers' output lines, merged, each prefixed `name | `.
    fn prefixed_lines(&self, containers: Vec<ContainerStatus>, tail: Option<u64>) -> LineStream {
        let streams: Vec<LineStream> = containers
            .into_iter()
            .map(|c| {
                let name = c.name;
                let lines = self.engine().follow_logs(&c.id, tail);
                Box::pin(lines.map(move |l| {
                    l.map(|mut l| {
                        l.text = format!("{name} | {}", l.text);
                        l
                    })
                })) as LineStream
            })
            .collect();
        Box::pin(stream::select_all(streams))
    }

    /// Runs `cmd` in the running container of `service` of the app: the lines from `stdin`
    /// go to its stdin, its output lines (stdout and stderr) to `on_line`. Answers its exit
    /// code. Cancelled, the command gets SIGTERM, then SIGKILL.
    pub async fn exec(
        &self,
        id: &AppId,
        service: &str,
        cmd: &[String],
        stdin: mpsc::Receiver<String>,
        run: Run<'_>,
    ) -> CoreResult<i64> {
        let container = self.service_container(id, service).await?;
        let session = self.engine().exec(&container.id, cmd).await?;
        let exec_id = session.id.clone();
        let mut output = session.output;
        let feed = feed_stdin(stdin, session.input);
        tokio::pin!(feed);
        loop {
            tokio::select! {
                _ = run.cancel.cancelled() => {
                    self.end_exec(&exec_id).await;
                    return Err(CoreError::Cancelled(format!(
                        "the command in {service} of {id} was cancelled"
                    )));
                }
                _ = &mut feed => {}
                line = output.next() => match line {
                    Some(Ok(l)) => (run.out)(&l.text),
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                },
            }
        }
        self.exit_code(&exec_id).await
    }

    /// The running container of `service` of the app.
    async fn service_container(&self, id: &AppId, service: &str) -> CoreResult<ContainerStatus> {
        let app = self.stored(id)?;
        let project = self.project(&app)?;
        if !project.services().contains(&service) {
            return Err(CoreError::NotFound(format!(
                "{id} has no service \"{service}\" (it has {})",
                project.services().join(", ")
            )));
        }
        project
            .status(self.engine())
            .await?
            .into_iter()
            .filter(|s| s.service == service)
            .flat_map(|s| s.containers)
            .find(|c| c.running)
            .ok_or_else(|| {
                CoreError::Conflict(format!("service \"{service}\" of {id} is not running"))
            })
    }

    /// The exit code of a command whose output ended (Docker may take a moment to record it).
    async fn exit_code(&self, exec_id: &str) -> CoreResult<i64> {
        for _ in 0..40 {
            if let ExecState::Exited(code) = self.engine().exec_state(exec_id).await? {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(CoreError::Failed(
            "the command's output ended but Docker reports it still running".into(),
        ))
    }

    /// Ends a cancelled command: its process and every process it started (a shell's
    /// children would outlive it) get SIGTERM, and SIGKILL when still there after
    /// [`TERM_GRACE`]. The tree is stopped first, so nothing forks out of it meanwhile.
    async fn end_exec(&self, exec_id: &str) {
        use nix::sys::signal::Signal;
        let Some(pid) = self.exec_pid(exec_id).await else {
            return;
        };
        let tree = stopped_tree(pid);
        tracing::info!(exec = %exec_id, pid, processes = tree.len(), "ending a cancelled command");
        signal_all(&tree, Signal::SIGTERM);
        signal_all(&tree, Signal::SIGCONT);
        let deadline = tokio::time::Instant::now() + TERM_GRACE;
        while tokio::time::Instant::now() < deadline && tree.iter().any(|p| is_alive(*p)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut left: Vec<i32> = tree
            .iter()
            .filter(|p| is_alive(**p))
            .flat_map(|p| process_tree(*p))
            .collect();
        left.sort_unstable();
        left.dedup();
        if !left.is_empty() {
            tracing::info!(exec = %exec_id, processes = left.len(), "killing a cancelled command");
            signal_all(&left, Signal::SIGKILL);
        }
    }

    /// The host pid of a command still running. Docker records it a moment after the
    /// command started (its first output may come before): wait for it, bounded.
    async fn exec_pid(&self, exec_id: &str) -> Option<i32> {
        for _ in 0..100 {
            match self.engine().exec_state(exec_id).await.ok()? {
                ExecState::Running { pid: Some(pid) } => return Some(pid),
                ExecState::Running { pid: None } => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ExecState::Exited(_) => return None,
            }
        }
        None
    }
}

/// `root` and its descendants, each stopped (SIGSTOP), so the tree cannot grow: stopped
/// until a new look at /proc finds no process that is not stopped yet (bounded).
fn stopped_tree(root: i32) -> Vec<i32> {
    let mut tree = vec![root];
    for _ in 0..16 {
        signal_all(&tree, nix::sys::signal::Signal::SIGSTOP);
        let now = process_tree(root);
        if now.iter().all(|p| tree.contains(p)) {
            break;
        }
        tree = now;
    }
    tree
}

fn signal_all(pids: &[i32], signal: nix::sys::signal::Signal) {
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), signal);
    }
}

/// `root` and its descendants, read from /proc (parents before children).
fn process_tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_pid(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The fields of `/proc/PID/stat` after the command name (state, parent, ...).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn parent_pid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Whether `pid` is a process that has not ended (a zombie has ended).
fn is_alive(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().map(|state| state != "Z" && state != "X"))
        .unwrap_or(false)
}

/// Writes each line from `stdin` (with its newline) to the command's input; closes the
/// input when the lines end (the client left). Pending once done, so it can sit in a
/// `select!` beside the output.
async fn feed_stdin(
    mut stdin: mpsc::Receiver<String>,
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
) {
    while let Some(line) = stdin.recv().await {
        let written = async {
            input.write_all(line.as_bytes()).await?;
            input.write_all(b"\n").await?;
            input.flush().await
        };
        if written.await.is_err() {
            break;
        }
    }
    let _ = input.shutdown().await;
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shells_tree_is_stopped_whole_and_ended_whole() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_tree(root).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let tree = stopped_tree(root);
        // A signal takes effect when its process next runs: on a loaded machine, a moment.
        let states = || -> Vec<String> {
            tree.iter()
                .filter_map(|p| stat_fields(*p)?.first().cloned())
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while states().iter().any(|s| s != "T") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let states = states();
        let parents: Vec<Option<i32>> = tree.iter().map(|p| parent_pid(*p)).collect();
        signal_all(&tree, nix::sys::signal::Signal::SIGTERM);
        signal_all(&tree, nix::sys::signal::Signal::SIGCONT);
        let _ = child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tree.iter().any(|p| is_alive(*p)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tree.len(), 3, "{tree:?}");
        assert_eq!(tree[0], root);
        assert_eq!(parents[1..], [Some(root), Some(root)]);
        assert_eq!(states, ["T", "T", "T"]);
        assert!(tree.iter().all(|p| !is_alive(*p)), "{tree:?}");
    }
}
