//! Building a template's images: each service's context streams as a tar from the stored
//! template into Docker's build API (classic builder), its output reported line by line. A
//! failed or cancelled build removes every image it created, so nothing dangles. The images
//! it creates are noted in its intent as they appear, so that those of a build a crash
//! interrupted are removed at the next start (`apps::recover`).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::spec::{BuildService, BuildSpec};
use crate::core::apps::lifecycle::list_files;
use crate::core::apps::recover::AppIntent;
use crate::core::apps::stream::write_stream;
use crate::core::engine::{BuildJob, BuildOptions, ByteStream, ContainerEngine, EngineError};
use crate::core::recovery::crash_point;
use crate::core::safe_fs;
use crate::core::{CoreError, CoreResult, ErrorKind};

/// What a build reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildProgress {
    /// A service's build started.
    Started { service: String, image: String },
    /// One line of Docker's build output.
    Line { service: String, line: String },
    /// A service's image is built.
    Built {
        service: String,
        image: String,
        id: String,
    },
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub service: String,
    pub image: String,
    pub id: String,
}

pub type BuildFn<'a> = &'a (dyn Fn(BuildProgress) + Send + Sync);

/// The ids of the images a classic build created, read from its output: each step ends in
/// ` ---> <id>`; the id is an old one after ` ---> Using cache` and for a `FROM` step.
#[derive(Debug, Default)]
pub struct StepIds {
    old_step: bool,
    pub created: Vec<String>,
}

impl StepIds {
    pub fn feed(&mut self, line: &str) {
        let line = line.trim();
        if let Some(step) = line.strip_prefix("Step ") {
            let instruction = step.split_once(" : ").map_or("", |(_, i)| i);
            self.old_step = instruction
                .get(..5)
                .is_some_and(|w| w.eq_ignore_ascii_case("from "));
            return;
        }
        let Some(rest) = line.strip_prefix("---> ") else {
            return;
        };
        let rest = rest.trim();
        if rest == "Using cache" {
            self.old_step = true;
        } else if !rest.contains(' ') && rest.chars().all(|c| c.is_ascii_hexdigit()) {
            if !self.old_step && !self.created.iter().any(|id| id == rest) {
                self.created.push(rest.to_string());
            }
            self.old_step = false;
        }
    }
}

/// The context of `b` as a tar stream: every file of the stored template under its context
/// directory (gantry's own record excepted), with fixed owners and times; no symlink is
/// followed.
fn context_tar(dir: &Path, b: &BuildService) -> CoreResult<ByteStream> {
    let prefix = if b.context.is_empty() {
        String::new()
    } else {
        format!("{}/", b.context)
    };
    let files: Vec<String> = list_files(dir)?
        .into_iter()
        .filter(|f| f.starts_with(&prefix))
        .collect();
    let root = dir.to_path_buf();
    Ok(write_stream("build context", move |out| {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        for rel in files {
            let mut f = safe_fs::open_file(&root, Path::new(&rel)).map_err(io::Error::from)?;
            tar.append_file(&rel[prefix.len()..], &mut f)?;
        }
        let mut out = tar.into_inner()?;
        std::io::Write::flush(&mut out)
    }))
}

/// Builds every service of `spec` from the template stored in `dir`, in order. On failure
/// or cancel, the images this build created are removed and the error returned. The images
/// it creates are noted in `intent` as they appear.
pub async fn build_all(
    engine: &dyn ContainerEngine,
    dir: &Path,
    spec: &BuildSpec,
    intent: Option<&AppIntent>,
    cancel: &CancellationToken,
    progress: BuildFn<'_>,
) -> CoreResult<Vec<Built>> {
    let ids = Mutex::new(StepIds::default());
    let mut built = Vec::new();
    for b in &spec.builds {
        let steps = Steps { ids: &ids, intent };
        match build_one(engine, dir, b, steps, cancel, progress).await {
            Ok(id) => {
                progress(BuildProgress::Built {
                    service: b.service.clone(),
                    image: b.image.clone(),
                    id: id.clone(),
                });
                built.push(Built {
                    service: b.service.clone(),
                    image: b.image.clone(),
                    id,
                });
            }
            Err(e) => {
                let created = std::mem::take(&mut lock(&ids).created);
                remove_created(engine, &created).await;
                return Err(e);
            }
        }
    }
    Ok(built)
}

fn lock(m: &Mutex<StepIds>) -> std::sync::MutexGuard<'_, StepIds> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a build's output lines go: the ids of the images it created, noted in its intent.
#[derive(Clone, Copy)]
struct Steps<'a> {
    ids: &'a Mutex<StepIds>,
    intent: Option<&'a AppIntent>,
}

impl Steps<'_> {
    fn feed(&self, line: &str) {
        let mut ids = lock(self.ids);
        let before = ids.created.len();
        ids.feed(line);
        let (Some(intent), true) = (self.intent, ids.created.len() > before) else {
            return;
        };
        match intent.note("images", &ids.created) {
            Ok(()) => crash_point("build.image-noted"),
            Err(e) => tracing::warn!(error = %e, "build intent: cannot note an image it created"),
        }
    }
}

async fn build_one(
    engine: &dyn ContainerEngine,
    dir: &Path,
    b: &BuildService,
    steps: Steps<'_>,
    cancel: &CancellationToken,
    progress: BuildFn<'_>,
) -> CoreResult<String> {
    progress(BuildProgress::Started {
        service: b.service.clone(),
        image: b.image.clone(),
    });
    let options = BuildOptions {
        tag: b.image.clone(),
        dockerfile: b.dockerfile.clone(),
        args: b.args.clone(),
    };
    let on_line = |line: &str| {
        steps.feed(line);
        progress(BuildProgress::Line {
            service: b.service.clone(),
            line: line.to_string(),
        });
    };
    let job = BuildJob {
        context: context_tar(dir, b)?,
        options,
        on_line: &on_line,
    };
    // Dropping the build request closes its connection, and Docker stops the build.
    let result = tokio::select! {
        r = engine.build_image(job) => r,
        _ = cancel.cancelled() => {
            return Err(CoreError::Cancelled(format!("the build of {} was cancelled", b.service)))
        }
    };
    result.map_err(|e| match e {
        EngineError::Rejected(m) => {
            CoreError::Invalid(format!("the build of service {} failed: {m}", b.service))
        }
        e => CoreError::from(e).context(format!("building service {}", b.service)),
    })
}

/// Removes images a failed build created, newest first (forced: a tag the build set goes
/// with its image). One that another image still builds on stays; that is no leftover.
pub async fn remove_created(engine: &dyn ContainerEngine, ids: &[String]) {
    for id in ids.iter().rev() {
        match engine.remove_image(id, true).await {
            Ok(_) => tracing::debug!(image = %id, "removed an image of a failed build"),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Conflict) => {}
            Err(e) => {
                tracing::warn!(image = %id, error = %e, "cannot remove an image of a failed build")
            }
        }
    }
}

/// How long the recovery of an interrupted build waits for Docker to end it, and how often
/// it looks.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// Undoes a build a crash interrupted: the images it noted (`noted`, short ids) and every
/// image Docker built on them since (the build goes on inside Docker for a moment after its
/// connection closed: a step's container is committed, the next step started), children
/// first, until two looks in a row find none of them, at most [`SETTLE_LIMIT`]. An image
/// still in use (the step's container of a build Docker has not ended yet) is tried again
/// at the next look.
pub async fn undo_interrupted(engine: &dyn ContainerEngine, noted: &[String]) -> CoreResult<()> {
    if noted.is_empty() {
        return Ok(()); // Killed before Docker created anything of it.
    }
    let started = Instant::now();
    let mut quiet = 0;
    while quiet < 2 {
        let family = built_on(engine, noted).await?;
        quiet = if family.is_empty() { quiet + 1 } else { 0 };
        for id in &family {
            match engine.remove_image(id, false).await {
                Ok(_) => tracing::info!(image = %id, "removed an image of an interrupted build"),
                Err(e @ EngineError::Unavailable(_)) => return Err(e.into()),
                Err(_) => {} // Still used by the build Docker carries on: the next look.
            }
        }
        if started.elapsed() > SETTLE_LIMIT {
            tracing::warn!(images = ?family, "stopped waiting for an interrupted build to end");
            return Ok(());
        }
        if quiet < 2 {
            tokio::time::sleep(SETTLE_EVERY).await;
        }
    }
    Ok(())
}

/// The images of `noted` (short ids) and those built on them, children first.
async fn built_on(engine: &dyn ContainerEngine, noted: &[String]) -> CoreResult<Vec<String>> {
    let images = engine.image_parents().await?;
    let is_noted = |id: &str| {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        noted
            .iter()
            .any(|n| !n.is_empty() && hex.starts_with(n.as_str()))
    };
    let mut depth: HashMap<&str, usize> = images
        .iter()
        .filter(|(id, _)| is_noted(id))
        .map(|(id, _)| (id.as_str(), 0))
        .collect();
    let mut grew = true;
    while grew {
        grew = false;
        for (id, parent) in &images {
            if depth.contains_key(id.as_str()) {
                continue;
            }
            if let Some(&d) = depth.get(parent.as_str()) {
                depth.insert(id, d + 1);
                grew = true;
            }
        }
    }
    let mut family: Vec<(&str, usize)> = depth.into_iter().collect();
    family.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(family.into_iter().map(|(id, _)| id.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_images_are_read_from_the_build_output() {
        let mut ids = StepIds::default();
        for line in [
            "Step 1/5 : FROM gantry-test/busybox:latest",
            " ---> 0a1b2c3d4e5f",
            "Step 2/5 : COPY app.sh /app.sh",
            " ---> Using cache",
            " ---> 111111111111",
            "Step 3/5 : COPY web /www",
            " ---> 222222222222",
            "Step 4/5 : RUN chmod +x /app.sh",
            " ---> Running in 333333333333",
            "Removing intermediate container 333333333333",
            " ---> 444444444444",
            "Step 5/5 : CMD [\"/app.sh\"]",
            " ---> Running in 555555555555",
            " ---> 666666666666",
            "Successfully built 666666666666",
        ] {
            ids.feed(line);
        }
        assert_eq!(
            ids.created,
            ["222222222222", "444444444444", "666666666666"]
        );
    }
}
