//! A container's code directory, `<socket_dir>/<name>_code`, mounted at its `/app`: an
//! update copies the new code beside it and swaps the two directories in one step
//! (`renameat2(RENAME_EXCHANGE)`), so the directory is always either all old or all new
//! code, and the swap can be undone the same way.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The live code directory of container `name`.
pub fn live_dir(socket_dir: &Path, name: &str) -> PathBuf {
    socket_dir.join(format!("{name}_code"))
}

fn staging_dir(socket_dir: &Path, name: &str) -> PathBuf {
    socket_dir.join(format!(".{name}_code.next"))
}

/// Copies the tree at `src` to `dst`: directories, regular files (with their mode) and
/// symlinks (as links, never followed); sockets, fifos and devices are left out.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    std::fs::create_dir(dst)?;
    std::fs::set_permissions(dst, std::fs::metadata(src)?.permissions())?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

fn remove_if_present(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
}

/// Without glibc's renameat2 wrapper: two renames (not atomic, but undone the same way).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp)?;
    std::fs::rename(b, a)?;
    std::fs::rename(&tmp, b)
}

/// New code in place of the old, until committed or undone.
pub struct Swap {
    live: PathBuf,
    /// The old code after the swap (or nothing, when there was none).
    other: PathBuf,
    had_code: bool,
}

/// Copies `src` beside the live directory and swaps it in (blocking: run off the runtime).
pub fn swap_in(socket_dir: &Path, name: &str, src: &Path) -> io::Result<Swap> {
    let live = live_dir(socket_dir, name);
    let other = staging_dir(socket_dir, name);
    remove_if_present(&other)?;
    if let Err(e) = copy_tree(src, &other) {
        let _ = remove_if_present(&other);
        return Err(e);
    }
    // The container's user must be able to read its code whatever the source's mode.
    let mode = std::fs::metadata(&other)?.permissions().mode() | 0o555;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(mode))?;
    let had_code = live.is_dir();
    if had_code {
        exchange(&other, &live)?;
    } else {
        std::fs::rename(&other, &live)?;
    }
    Ok(Swap {
        live,
        other,
        had_code,
    })
}

impl Swap {
    pub fn live(&self) -> &Path {
        &self.live
    }

    /// Puts the old code back (or no code, when there was none).
    pub fn undo(self) -> io::Result<()> {
        if self.had_code {
            exchange(&self.other, &self.live)?;
        } else {
            std::fs::rename(&self.live, &self.other)?;
        }
        remove_if_present(&self.other)
    }

    /// Keeps the new code; the old is removed.
    pub fn commit(self) -> io::Result<()> {
        remove_if_present(&self.other)
    }
}

/// Removes the code directory of a deleted container.
pub fn remove(socket_dir: &Path, name: &str) -> io::Result<()> {
    remove_if_present(&live_dir(socket_dir, name))?;
    remove_if_present(&staging_dir(socket_dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn swap_copies_undoes_and_commits() {
        let t = tempfile::tempdir().unwrap();
        let (v1, v2) = (t.path().join("v1"), t.path().join("v2"));
        write(&v1.join("run.sh"), "one");
        write(&v2.join("lib/run.sh"), "two");
        std::os::unix::fs::symlink("lib/run.sh", v2.join("link")).unwrap();
        let dir = t.path().join("sockets");
        std::fs::create_dir(&dir).unwrap();
        // First code: nothing to swap with; undo leaves no code.
        let s = swap_in(&dir, "f", &v1).unwrap();
        assert_eq!(
            std::fs::read_to_string(s.live().join("run.sh")).unwrap(),
            "one"
        );
        s.undo().unwrap();
        assert!(!live_dir(&dir, "f").exists());
        swap_in(&dir, "f", &v1).unwrap().commit().unwrap();
        // Second code: swapped in whole, undone to the first, then kept.
        let s = swap_in(&dir, "f", &v2).unwrap();
        let live = live_dir(&dir, "f");
        assert_eq!(
            std::fs::read_to_string(live.join("lib/run.sh")).unwrap(),
            "two"
        );
        assert_eq!(
            std::fs::read_link(live.join("link")).unwrap(),
            Path::new("lib/run.sh")
        );
        assert!(!live.join("run.sh").exists());
        s.undo().unwrap();
        assert_eq!(std::fs::read_to_string(live.join("run.sh")).unwrap(), "one");
        swap_in(&dir, "f", &v2).unwrap().commit().unwrap();
        assert!(live.join("lib/run.sh").exists() && !staging_dir(&dir, "f").exists());
        remove(&dir, "f").unwrap();
        assert!(!live.exists());
    }
}
