//! The last log lines of every running Flow Manager container, kept so that a crash is
//! published as soon as Docker reports the exit, with the very last lines in it.
//!
//! Docker closes a container's log after every line it wrote reached it and before it sends
//! the `die`, then cleans the container up (unmounts, network) holding the container's lock:
//! a logs or inspect request made right after the `die` waits for that, on Docker 20.10
//! some 50-190 ms. So each running container is inspected once when it starts:
//! - with the `json-file` log driver (Docker's default) its log file is noted, and at the exit
//!   its last lines are read from the file's end: complete, without asking Docker;
//! - with any other driver its logs are followed (from its last `crash_log_lines` lines on)
//!   into a ring of that many lines. Docker ends the follow after it closed the log (on 20.10
//!   some 3-40 ms after the `die`, once its file watch is torn down); from then on the ring
//!   holds exactly the last lines. At a crash whose follow has not ended yet, the follow's end
//!   and a logs request race; the first complete answer wins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::engine::{ContainerEngine, EngineResult, LineStream};
use crate::core::loglines::json_file_tail;

/// What is kept, by container id.
#[derive(Default)]
pub struct Tails {
    kept: Mutex<HashMap<String, Tail>>,
}

/// How one container's last lines are kept; dropping it ends a follow.
pub struct Tail {
    kept: watch::Receiver<Kept>,
    /// How many lines.
    lines: usize,
    task: JoinHandle<()>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
enum Kept {
    /// The container is being inspected.
    Starting,
    /// Its `json-file` log, read when it exits.
    File(PathBuf),
    /// A follow of its logs: the last lines so far, and how the follow ended.
    Following {
        lines: VecDeque<String>,
        end: Option<End>,
    },
}

impl Kept {
    /// Whether the last lines are there to take (or never will be).
    fn settled(&self) -> bool {
        !matches!(self, Kept::Starting | Kept::Following { end: None, .. })
    }

    /// Whether a follow ended (the container stopped, or the stream failed).
    fn ended(&self) -> bool {
        matches!(self, Kept::Following { end: Some(_), .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Docker ended the stream: the container's log is closed, every line is in.
    Complete,
    /// The stream failed (Docker restarted, the container has no readable log): lines may
    /// be missing.
    Failed,
}

/// Where a crash's lines came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    LogFile,
    Follow,
    LogsRequest,
}

impl Tails {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Tail>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the last `lines` lines of running container `id` from now on, unless they are
    /// kept already.
    pub fn keep(&self, engine: &Arc<dyn ContainerEngine>, id: &str, lines: u32) {
        let mut map = self.map();
        if map.get(id).is_some_and(|t| !t.kept.borrow().ended()) {
            return;
        }
        let (tx, kept) = watch::channel(Kept::Starting);
        let lines = lines as usize;
        let task = tokio::spawn(start(engine.clone(), id.to_string(), lines, tx));
        map.insert(id.to_string(), Tail { kept, lines, task });
    }

    /// How the last lines of `id` are kept, no longer kept here.
    pub fn take(&self, id: &str) -> Option<Tail> {
        self.map().remove(id)
    }

    /// Forgets the containers not in `running`.
    pub fn retain(&self, running: &HashSet<String>) {
        self.map().retain(|id, _| running.contains(id));
    }

    /// Forgets every container (ending the follows).
    pub fn clear(&self) {
        self.map().clear();
    }
}

/// Inspects the container: notes its `json-file` log, or follows its logs.
async fn start(engine: Arc<dyn ContainerEngine>, id: String, n: usize, tx: watch::Sender<Kept>) {
    if let Some(path) = engine.inspect_container(&id).await.ok().and_then(json_log) {
        tracing::debug!(container = %id, log = %path.display(), "keeping the last log lines for crash reports: the log file");
        tx.send_replace(Kept::File(path));
        return;
    }
    tracing::debug!(container = %id, "keeping the last log lines for crash reports: following the logs");
    tx.send_replace(Kept::Following {
        lines: VecDeque::new(),
        end: None,
    });
    fill(engine.follow_logs(&id, Some(n as u64)), &tx, n).await;
}

/// The container's `json-file` log, when gantry sees it (Docker on this machine).
fn json_log(c: ContainerInspectResponse) -> Option<PathBuf> {
    let driver = c.host_config?.log_config?.typ?;
    let path = PathBuf::from(c.log_path?);
    (driver == "json-file" && path.is_absolute() && path.is_file()).then_some(path)
}

/// Feeds the ring from the followed lines until the stream ends.
async fn fill(mut stream: LineStream, tx: &watch::Sender<Kept>, keep: usize) {
    let end = loop {
        let line = match stream.next().await {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "following a Flow Manager container's logs failed");
                break End::Failed;
            }
            None => break End::Complete,
        };
        tx.send_modify(|k| {
            if let Kept::Following { lines, .. } = k {
                if lines.len() == keep {
                    lines.pop_front();
                }
                if keep > 0 {
                    lines.push_back(line.text);
                }
            }
        });
    };
    tx.send_modify(|k| {
        if let Kept::Following { end: e, .. } = k {
            *e = Some(end);
        }
    });
}

impl Tail {
    /// The container's last lines if they can be had now, its process having exited: from
    /// its log file (a few KiB just written, from the page cache: read here), or its
    /// follow once complete.
    pub fn lines_now(&self) -> Option<(Vec<String>, Source)> {
        lines_of(&self.kept.borrow(), self.lines)
    }

    /// The container's last lines once it exited: [`Tail::lines_now`] as soon as it can
    /// tell, or what `request` (Docker's logs request) answers if that comes first or it
    /// cannot.
    pub async fn last_lines(
        mut self,
        request: impl Future<Output = EngineResult<Vec<String>>>,
    ) -> (EngineResult<Vec<String>>, Source) {
        let n = self.lines;
        let kept = async {
            let settled = self.kept.wait_for(Kept::settled).await.ok()?;
            lines_of(&settled, n)
        };
        tokio::select! {
            biased;
            Some((lines, source)) = kept => (Ok(lines), source),
            answer = request => (answer, Source::LogsRequest),
        }
    }
}

fn lines_of(kept: &Kept, n: usize) -> Option<(Vec<String>, Source)> {
    match kept {
        Kept::File(path) => match json_file_tail(path, n) {
            Ok(lines) => lines.map(|l| (l, Source::LogFile)),
            Err(e) => {
                tracing::debug!(log = %path.display(), error = %e, "cannot read a container's log file");
                None
            }
        },
        Kept::Following {
            lines,
            end: Some(End::Complete),
        } => Some((lines.iter().cloned().collect(), Source::Follow)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::{EngineError, LineStream, LogLine};

    fn lines(texts: &[&str]) -> Vec<EngineResult<LogLine>> {
        texts
            .iter()
            .map(|t| {
                Ok(LogLine {
                    stdout: true,
                    text: t.to_string(),
                })
            })
            .collect()
    }

    fn tail_of(stream: LineStream, keep: usize) -> Tail {
        let (tx, kept) = watch::channel(Kept::Following {
            lines: VecDeque::new(),
            end: None,
        });
        let task = tokio::spawn(async move { fill(stream, &tx, keep).await });
        Tail {
            kept,
            lines: keep,
            task,
        }
    }

    async fn ended(tail: &Tail) {
        let mut kept = tail.kept.clone();
        kept.wait_for(Kept::ended).await.unwrap();
    }

    /// The lines of `tail` when Docker's logs request answers `asked` at once.
    async fn asked(tail: Tail) -> (Vec<String>, Source) {
        let (got, source) = tail
            .last_lines(async { Ok(vec!["asked".to_string()]) })
            .await;
        (got.unwrap(), source)
    }

    /// A request that must not be made.
    async fn never() -> EngineResult<Vec<String>> {
        panic!("Docker was asked")
    }

    #[tokio::test]
    async fn a_json_file_log_answers_at_once_and_falls_back_when_it_cannot_tell() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c-json.log");
        let records: String = ["a\n", "b\n", "c"]
            .iter()
            .map(|l| format!("{}\n", serde_json::json!({"log": l, "stream": "stdout"})))
            .collect();
        std::fs::write(&path, records).unwrap();
        let file_tail = |path: PathBuf| {
            let (_tx, kept) = watch::channel(Kept::File(path));
            Tail {
                kept,
                lines: 2,
                task: tokio::spawn(async {}),
            }
        };
        let (got, source) = file_tail(path.clone()).last_lines(never()).await;
        assert_eq!(
            (got.unwrap(), source),
            (vec!["b".into(), "c".into()], Source::LogFile)
        );
        std::fs::write(&path, "not json\n").unwrap();
        assert_eq!(
            asked(file_tail(path)).await,
            (vec!["asked".into()], Source::LogsRequest)
        );
    }

    #[tokio::test]
    async fn a_complete_follow_answers_its_last_lines_without_asking_docker() {
        let stream = futures_util::stream::iter(lines(&["a", "b", "c", "d"]));
        let tail = tail_of(Box::pin(stream), 3);
        ended(&tail).await;
        let now = tail.lines_now().unwrap();
        assert_eq!(
            now,
            (vec!["b".into(), "c".into(), "d".into()], Source::Follow)
        );
        let (got, source) = tail.last_lines(never()).await;
        assert_eq!(got.unwrap(), ["b", "c", "d"]);
        assert_eq!(source, Source::Follow);
    }

    #[tokio::test]
    async fn a_follow_still_going_waits_for_its_end_or_the_request() {
        // The follow ends after the request answered: the request wins.
        let slow = lines(&["x"]).into_iter().chain(std::iter::once(Ok(LogLine {
            stdout: true,
            text: "y".into(),
        })));
        let stream = futures_util::stream::iter(slow).then(|l| async {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            l
        });
        let tail = tail_of(Box::pin(stream), 5);
        assert_eq!(tail.lines_now(), None, "still following");
        assert_eq!(
            asked(tail).await,
            (vec!["asked".into()], Source::LogsRequest)
        );
        // The follow ends first: its lines win, the request is dropped.
        let stream = futures_util::stream::iter(lines(&["p", "q"])).then(|l| async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            l
        });
        let tail = tail_of(Box::pin(stream), 5);
        let request = async {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            Ok(vec![])
        };
        let (got, source) = tail.last_lines(request).await;
        assert_eq!(
            (got.unwrap(), source),
            (vec!["p".to_string(), "q".to_string()], Source::Follow)
        );
    }

    #[tokio::test]
    async fn a_failed_follow_leaves_the_answer_to_the_request() {
        let mut items = lines(&["partial"]);
        items.push(Err(EngineError::Unavailable("gone".into())));
        let tail = tail_of(Box::pin(futures_util::stream::iter(items)), 5);
        ended(&tail).await;
        assert_eq!(
            asked(tail).await,
            (vec!["asked".into()], Source::LogsRequest)
        );
    }

    #[tokio::test]
    async fn a_ring_of_nothing_keeps_nothing() {
        let tail = tail_of(Box::pin(futures_util::stream::iter(lines(&["a"]))), 0);
        let (got, _) = tail.last_lines(std::future::pending()).await;
        assert!(got.unwrap().is_empty());
    }
}
