//! The last log lines of every running Flow Manager container, kept from a follow of its
//! logs so that a crash is published as soon as Docker reports the exit.
//!
//! A logs request made right after a container's `die` is answered only once Docker has
//! cleaned the container up (on Docker 20.10 some 50-190 ms later), while a follow of the
//! same logs ends when Docker closes the log, which it does before it sends the `die` and
//! after every line the container wrote reached the log. So each running container has one
//! follow (from its last `crash_log_lines` lines on) feeding a ring of that many lines: once
//! the follow has ended, the ring holds exactly the last lines. At a crash whose follow has
//! not ended yet, the follow's end and a logs request race; the first complete answer wins.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::engine::{ContainerEngine, EngineResult};

/// The follows, by container id.
#[derive(Default)]
pub struct Tails {
    followed: Mutex<HashMap<String, Tail>>,
}

/// One container's follow and its ring of last lines; dropping it ends the follow.
pub struct Tail {
    ring: watch::Receiver<Ring>,
    task: JoinHandle<()>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<String>,
    end: Option<End>,
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
    Follow,
    LogsRequest,
}

impl Tails {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Tail>> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the logs of running container `id`, keeping its last `lines` lines, unless a
    /// follow of it is still going.
    pub fn follow(&self, engine: &Arc<dyn ContainerEngine>, id: &str, lines: u32) {
        let mut map = self.map();
        if map.get(id).is_some_and(|t| t.ring.borrow().end.is_none()) {
            return;
        }
        tracing::debug!(container = %id, "following the logs for crash reports");
        let (tx, ring) = watch::channel(Ring::default());
        let stream = engine.follow_logs(id, Some(u64::from(lines)));
        let task = tokio::spawn(fill(stream, tx, lines as usize));
        map.insert(id.to_string(), Tail { ring, task });
    }

    /// The follow of `id`, no longer kept here.
    pub fn take(&self, id: &str) -> Option<Tail> {
        self.map().remove(id)
    }

    /// Ends the follows of the containers not in `running`.
    pub fn retain(&self, running: &HashSet<String>) {
        self.map().retain(|id, _| running.contains(id));
    }

    /// Ends every follow.
    pub fn clear(&self) {
        self.map().clear();
    }
}

/// Feeds the ring from the followed lines until the stream ends.
async fn fill(mut stream: crate::core::engine::LineStream, tx: watch::Sender<Ring>, keep: usize) {
    let end = loop {
        match stream.next().await {
            Some(Ok(line)) => tx.send_modify(|r| {
                if r.lines.len() == keep {
                    r.lines.pop_front();
                }
                if keep > 0 {
                    r.lines.push_back(line.text);
                }
            }),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "following a Flow Manager container's logs failed");
                break End::Failed;
            }
            None => break End::Complete,
        }
    };
    tx.send_modify(|r| r.end = Some(end));
}

impl Tail {
    /// The container's last lines once it exited: the ring as soon as its follow is complete,
    /// or what `request` (Docker's logs request) answers if that comes first or the follow
    /// failed.
    pub async fn last_lines(
        mut self,
        request: impl Future<Output = EngineResult<Vec<String>>>,
    ) -> (EngineResult<Vec<String>>, Source) {
        let complete = async {
            let ring = self.ring.wait_for(|r| r.end.is_some()).await.ok()?;
            (ring.end == Some(End::Complete)).then(|| ring.lines.iter().cloned().collect())
        };
        tokio::select! {
            biased;
            Some(lines) = complete => (Ok(lines), Source::Follow),
            answer = request => (answer, Source::LogsRequest),
        }
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
        let (tx, ring) = watch::channel(Ring::default());
        let task = tokio::spawn(fill(stream, tx, keep));
        Tail { ring, task }
    }

    async fn ended(tail: &Tail) {
        let mut ring = tail.ring.clone();
        ring.wait_for(|r| r.end.is_some()).await.unwrap();
    }

    #[tokio::test]
    async fn a_complete_follow_answers_its_last_lines_without_asking_docker() {
        let stream = futures_util::stream::iter(lines(&["a", "b", "c", "d"]));
        let tail = tail_of(Box::pin(stream), 3);
        let asked = std::sync::atomic::AtomicBool::new(false);
        let request = async {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(vec!["from docker".to_string()])
        };
        ended(&tail).await;
        let (got, source) = tail.last_lines(request).await;
        assert_eq!(got.unwrap(), ["b", "c", "d"]);
        assert_eq!(source, Source::Follow);
        assert!(!asked.load(std::sync::atomic::Ordering::SeqCst));
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
        let (got, source) = tail
            .last_lines(async { Ok(vec!["asked".to_string()]) })
            .await;
        assert_eq!(
            (got.unwrap(), source),
            (vec!["asked".to_string()], Source::LogsRequest)
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
        let (got, source) = tail
            .last_lines(async { Ok(vec!["whole".to_string()]) })
            .await;
        assert_eq!(
            (got.unwrap(), source),
            (vec!["whole".to_string()], Source::LogsRequest)
        );
    }

    #[tokio::test]
    async fn a_ring_of_nothing_keeps_nothing() {
        let tail = tail_of(Box::pin(futures_util::stream::iter(lines(&["a"]))), 0);
        let (got, _) = tail.last_lines(std::future::pending()).await;
        assert!(got.unwrap().is_empty());
    }
}
