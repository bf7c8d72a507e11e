//! Keeping the resident set small. The daemon's own code is mapped from its file, and the
//! kernel maps in the pages around every page fault (64 KiB by default), so start-up leaves
//! much code resident that never runs again (config parsing, route tables, the first Docker
//! probe). Once the daemon is up, its executable's pages are handed back to the kernel
//! (`MADV_PAGEOUT`): they stay in the page cache, and the code that does run is faulted in
//! again at once; what remains resident is the idle working set. The start-up work that goes
//! on in the background once the daemon is up (the watchers' first resynchronisation, the
//! live view's first fetch, the first Docker probes) leaves its code resident too, so the
//! pages are handed back once more when it has run.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::time::Duration;

use nix::sys::mman::{madvise, MmapAdvise};
use tokio_util::sync::CancellationToken;

/// How long after start-up the code is handed back a second time.
const SETTLE: Duration = Duration::from_secs(10);

/// The address ranges of the running executable's read-only and executable file mappings.
fn own_mappings() -> Vec<(usize, usize)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.split_whitespace().nth(5) == Some(exe.as_str()))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|perms| !perms.contains('w'))
        })
        .filter_map(|l| {
            let (start, end) = l.split_whitespace().next()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end - start))
        })
        .collect()
}

/// Hands the executable's resident pages back to the kernel (see the module comment).
/// Best effort: a failure (an older kernel) only costs memory.
fn trim_own_code() {
    for (start, len) in own_mappings() {
        let Some(addr) = NonNull::new(start as *mut c_void) else {
            continue;
        };
        // SAFETY: the range is a whole file mapping of this process's executable, read
        // from /proc/self/maps (read-only or executable, never written: the exe is not
        // writable while it runs). MADV_PAGEOUT only unmaps clean file pages, which fault
        // back in unchanged from the file on the next access, so no memory the program uses
        // changes.
        #[allow(unsafe_code)]
        let r = unsafe { madvise(addr, len, MmapAdvise::MADV_PAGEOUT) };
        if let Err(e) = r {
            tracing::debug!(error = %e, "madvise(MADV_PAGEOUT) on the executable failed");
        }
    }
}

/// Hands the code back now (start-up is done) and once more when the start-up work that goes
/// on in the background has run (unless the daemon stops first).
pub fn trim_code_after_start(stop: CancellationToken) {
    trim_own_code();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(SETTLE) => trim_own_code(),
        }
    });
}
