//! Crash points: where the fault tests make gantry exit abruptly.
//!
//! `crash_point("start.intent-written")` does nothing in a release build (the body is
//! compiled out). In a debug build (the tests' binary) it exits the process with SIGKILL when
//! `GANTRY_CRASH_AT` names the point (`name`, or `name@n` for its n-th hit); with
//! `GANTRY_CRASH_NOTE=<file>` it first writes there which point it was and, for a point
//! between a write and its fsync, which file and how many bytes of it were durable, so the
//! test can tear or drop that write as a power cut would. Every name must be a row of
//! [`super::points::POINTS`] (checked in debug builds).

use std::path::Path;

/// A named step of a long operation; see the module documentation.
#[inline]
pub fn crash_point(name: &'static str) {
    #[cfg(debug_assertions)]
    armed::hit(name, None);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A crash point between a write to `file` and its fsync; `durable` bytes of the file were
/// on disk before the write (0 for a new file).
#[inline]
pub fn crash_point_unsynced(name: &'static str, file: &Path, durable: u64) {
    #[cfg(debug_assertions)]
    armed::hit(name, Some((file, durable)));
    #[cfg(not(debug_assertions))]
    let _ = (name, file, durable);
}

/// How long after an archive's last bytes went to Docker [`crash_when_sent`] crashes: time
/// for them to reach Docker, far less than Docker takes to register the images of an
/// archive of the fault tests' big images.
#[cfg(debug_assertions)]
const AFTER_SENT: std::time::Duration = std::time::Duration::from_millis(20);

/// `body`, an archive going to Docker, unchanged in a release build. In a debug build the
/// crash point `name` is reached [`AFTER_SENT`] after the body ended: the moment Docker has
/// the whole archive and registers its images, and the killed client can no longer stop
/// it. When Docker answers sooner, the point is reached then instead
/// ([`crash_when_answered`]): Docker has done the work and gantry has not noted the answer.
/// Either way it is reached once per archive, so a fault test arming it always crashes.
pub fn crash_when_sent(
    name: &'static str,
    body: crate::core::engine::ByteStream,
    answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> crate::core::engine::ByteStream {
    #[cfg(debug_assertions)]
    {
        use futures_util::StreamExt;
        use std::sync::atomic::Ordering;
        let end = futures_util::stream::once(async move {
            tokio::spawn(async move {
                tokio::time::sleep(AFTER_SENT).await;
                if !answered.swap(true, Ordering::SeqCst) {
                    crash_point(name);
                }
            });
            None
        });
        Box::pin(body.map(Some).chain(end).filter_map(std::future::ready))
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = (name, answered);
        body
    }
}

/// Docker answered the archive that [`crash_when_sent`] wrapped with the same `name` and
/// `answered`: its crash point is reached now unless it was already.
pub fn crash_when_answered(name: &'static str, answered: &std::sync::atomic::AtomicBool) {
    if !answered.swap(true, std::sync::atomic::Ordering::SeqCst) {
        crash_point(name);
    }
}

#[cfg(debug_assertions)]
mod armed {
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    /// The point to crash at and at which hit, from `GANTRY_CRASH_AT`.
    fn target() -> Option<&'static (String, u32)> {
        static TARGET: OnceLock<Option<(String, u32)>> = OnceLock::new();
        TARGET
            .get_or_init(|| parse(&std::env::var("GANTRY_CRASH_AT").ok()?))
            .as_ref()
    }

    pub(super) fn parse(spec: &str) -> Option<(String, u32)> {
        let spec = spec.trim();
        if spec.is_empty() {
            return None;
        }
        match spec.split_once('@') {
            Some((name, n)) => Some((name.to_string(), n.parse().ok().filter(|n| *n > 0)?)),
            None => Some((spec.to_string(), 1)),
        }
    }

    pub(super) fn hit(name: &'static str, file: Option<(&Path, u64)>) {
        assert!(
            super::super::points::is_known(name),
            "crash point {name} is not in src/core/recovery/points.rs"
        );
        let Some((want, nth)) = target() else {
            return;
        };
        static HITS: AtomicU32 = AtomicU32::new(0);
        if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *nth {
            return;
        }
        note(name, file);
        eprintln!("crash point {name} reached: exiting abruptly");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; should raise fail, abort is the next most abrupt exit.
        std::process::abort();
    }

    fn note(name: &str, file: Option<(&Path, u64)>) {
        let Ok(path) = std::env::var("GANTRY_CRASH_NOTE") else {
            return;
        };
        let note = match file {
            Some((f, durable)) => serde_json::json!({
                "point": name, "file": f.display().to_string(), "durable": durable,
            }),
            None => serde_json::json!({ "point": name }),
        };
        let written = std::fs::write(&path, note.to_string())
            .and_then(|()| std::fs::File::open(&path)?.sync_all());
        if let Err(e) = written {
            eprintln!("crash point {name}: cannot write the note {path}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_names_a_point_and_a_hit() {
        assert_eq!(
            armed::parse("start.done"),
            Some(("start.done".to_string(), 1))
        );
        assert_eq!(
            armed::parse(" compose.up.created@3 "),
            Some(("compose.up.created".to_string(), 3))
        );
        assert_eq!(armed::parse("x@0"), None);
        assert_eq!(armed::parse("x@y"), None);
        assert_eq!(armed::parse(""), None);
    }

    #[test]
    fn an_unarmed_point_does_nothing() {
        // The unit tests never set GANTRY_CRASH_AT.
        crash_point("start.done");
        crash_point_unsynced("intent.unsynced", Path::new("/nonexistent"), 0);
    }

    #[test]
    #[should_panic(expected = "not in src/core/recovery/points.rs")]
    fn an_unknown_point_is_refused() {
        crash_point("no.such.point");
    }
}
