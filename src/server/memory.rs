//! Keeping the resident set small. The daemon's own code is mapped from its file, and the
//! kernel maps in the pages around every page fault (64 KiB by default), so start-up leaves
//! much code resident that never runs again (config parsing, route tables, the first Docker
//! probe). Once the daemon is up, its executable's pages are handed back to the kernel
//! (`MADV_PAGEOUT`): they stay in the page cache, and the code that does run is faulted in
//! again at once; what remains resident is the idle working set. The start-up work that goes
//! on in the background once the daemon is up (the watchers' first resynchronisation, the
//! live view's first fetch, the first Docker probes) leaves its code resident too, so the
//! pages are handed back once more when it has run. The heap is trimmed after bursts
//! (`trim_heap_after_bursts`).

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

/// How often the heap is looked at (its anonymous resident size, from /proc).
const HEAP_LOOK: Duration = Duration::from_secs(10);
/// Growth of the anonymous resident set since the last trim that makes a quiet heap trimmed.
const HEAP_GROWTH_KB: u64 = 2048;

/// The anonymous resident set (`RssAnon`) in KiB: the heap, stacks and other private memory.
fn anon_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the free memory of every malloc arena to the kernel (`malloc_trim(0)`).
#[cfg(target_env = "gnu")]
fn release_free_heap() {
    // SAFETY: malloc_trim only gives free memory inside glibc's arenas back to the kernel
    // (madvise on whole free pages, shrinking the top); it takes each arena's lock and
    // touches no memory the program holds. It has no preconditions.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries have no `malloc_trim`.
#[cfg(not(target_env = "gnu"))]
fn release_free_heap() {}

/// glibc keeps an arena per thread that allocated (each tokio worker has one), and what a
/// burst of work freed stays in them: it goes back to the kernel only from an arena's top,
/// and a few live allocations further up hold it all (measured: 1 MiB in use, 26 MiB held,
/// after 2000 Flow Manager messages). Every `HEAP_LOOK` the anonymous resident set is read;
/// when it grew by `HEAP_GROWTH_KB` since the last trim and has stopped growing (the burst is
/// over), the free memory is handed back. Idle, this is one small /proc read per look.
pub fn trim_heap_after_bursts(stop: CancellationToken) {
    tokio::spawn(async move {
        let Some(mut floor) = anon_rss_kb() else {
            return;
        };
        let mut last = floor;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEAP_LOOK) => {}
            }
            let Some(now) = anon_rss_kb() else { return };
            if now >= floor + HEAP_GROWTH_KB && now <= last {
                release_free_heap();
                let after = anon_rss_kb().unwrap_or(now);
                tracing::debug!(before_kb = now, after_kb = after, "free heap handed back");
                floor = after;
            }
            floor = floor.min(now);
            last = now;
        }
    });
}
