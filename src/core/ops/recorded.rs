//! An image load with its intent: the images the archive's `manifest.json` names (and that
//! Docker did not have) are noted before the bytes that complete the manifest reach Docker,
//! so a crash at any later moment leaves an intent naming every image Docker can create from
//! the archive; the recovery removes them (docs/DECISIONS.md, "Interrupted operations").

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use super::images::LoadProgress;
use super::Reporter;
use crate::core::apps::recover::{AppIntent, AppOp};
use crate::core::apps::stream::TarWatch;
use crate::core::engine::ByteStream;
use crate::core::recovery::{crash_point, crash_when_sent};
use crate::core::system::LoadedImage;
use crate::core::{Core, CoreResult};

/// What the noting stream shares with the load.
struct Noting {
    inner: ByteStream,
    watch: Option<TarWatch>,
    intent: Arc<AppIntent>,
    before: HashSet<String>,
    noted: Arc<Mutex<Vec<String>>>,
}

impl Noting {
    /// Notes the new ones of `ids`, durably.
    async fn note(&mut self, ids: Vec<String>) -> std::io::Result<()> {
        let noted = {
            let mut noted = self.noted.lock().unwrap_or_else(|p| p.into_inner());
            noted.extend(ids.into_iter().filter(|id| !self.before.contains(id)));
            noted.clone()
        };
        let intent = self.intent.clone();
        let written = tokio::task::spawn_blocking(move || intent.note("images", noted)).await;
        match written {
            Ok(Ok(())) => {
                crash_point("load-image.manifest-noted");
                Ok(())
            }
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// `noting.inner`, with the manifest's images noted on the way.
fn noting_stream(noting: Noting) -> ByteStream {
    Box::pin(futures_util::stream::unfold(noting, |mut n| async move {
        match n.inner.next().await {
            Some(Ok(chunk)) => {
                let ids = n.watch.as_mut().and_then(|w| w.feed(&chunk));
                match ids {
                    Some(ids) => match n.note(ids).await {
                        Ok(()) => Some((Ok(chunk), n)),
                        Err(e) => Some((Err(e), n)),
                    },
                    None => Some((Ok(chunk), n)),
                }
            }
            Some(Err(e)) => Some((Err(e), n)),
            None => None,
        }
    }))
}

impl Core {
    /// Loads `stream` (see `load_counted`) with its intent recorded: done when Docker
    /// answered; left for the recovery when images were noted and the load failed (Docker
    /// may have created some of them, or may still).
    pub(super) async fn load_recorded(
        &self,
        stream: ByteStream,
        total: Option<u64>,
        reporter: &Reporter<LoadProgress>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> CoreResult<LoadedImage> {
        self.apps.after_cleanups(cancel).await;
        let before = self.system.known_images().await?;
        let intent = self
            .apps
            .intents()
            .begin(AppOp::LoadImage, None, Default::default())?;
        let intent = Arc::new(intent);
        crash_point("load-image.intent-written");
        let noted = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicBool::new(false));
        let noting = Noting {
            inner: stream,
            watch: TarWatch::for_name("image.tar"),
            intent: intent.clone(),
            before,
            noted: noted.clone(),
        };
        // While Docker registers an archive it has whole, the fault tests may crash.
        let body = crash_when_sent(
            "load-image.load-in-flight",
            noting_stream(noting),
            answered.clone(),
        );
        let result = self.load_counted(body, total, reporter, cancel).await;
        crate::core::recovery::crash_when_answered("load-image.load-in-flight", &answered);
        crash_point("load-image.loaded");
        let noted = !noted.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if result.is_err() && noted {
            intent.keep();
        } else {
            intent.done();
        }
        result
    }
}
