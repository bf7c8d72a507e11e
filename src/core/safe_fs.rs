//! Reading what an app's containers can write, without following a symlink they planted.
//!
//! An app's directory is gantry's, but a service that bind-mounts a part of it can put a
//! symlink there between two starts (`data/env -> /etc/shadow`). Everything gantry reads or
//! hands to Docker from below an app directory goes through here: each path component is
//! opened relative to the one before with `O_NOFOLLOW` (`openat`), so a symlink anywhere on
//! the way is refused, whatever it points at, and a swap between a check and a use finds the
//! directory already open. Files are read with a size cap.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};

/// Why a path below a root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SafeFsError {
    #[error("\"{0}\" is a symbolic link (gantry follows none below an app's directory)")]
    Symlink(String),
    #[error("\"{0}\" is not a regular file")]
    NotAFile(String),
    #[error("\"{0}\" is larger than {1} bytes")]
    TooLarge(String, u64),
    #[error("\"{0}\" must be a relative path without \"..\"")]
    Escapes(String),
    #[error("\"{path}\": {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl SafeFsError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, SafeFsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl From<SafeFsError> for io::Error {
    /// Keeps the kind of an I/O error (NotFound stays NotFound).
    fn from(e: SafeFsError) -> Self {
        match e {
            SafeFsError::Io { path, source } => {
                io::Error::new(source.kind(), format!("{path}: {source}"))
            }
            other => io::Error::other(other),
        }
    }
}

fn io_at(path: &str, e: Errno) -> SafeFsError {
    SafeFsError::Io {
        path: path.to_string(),
        source: io::Error::from(e),
    }
}

/// The normal components of `rel`; anything else (absolute, `..`) is refused.
fn parts(rel: &Path) -> Result<Vec<&std::ffi::OsStr>, SafeFsError> {
    rel.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(SafeFsError::Escapes(rel.display().to_string())),
        })
        .collect()
}

/// Opens `name` below `dir` without following a symlink: `flags` plus `O_NOFOLLOW`.
fn open_one(
    dir: impl AsFd,
    name: &std::ffi::OsStr,
    flags: OFlag,
    shown: &str,
) -> Result<OwnedFd, SafeFsError> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(dir.as_fd(), name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => Err(SafeFsError::Symlink(shown.to_string())),
        Err(Errno::ENOTDIR) if is_symlink(dir, name) => {
            Err(SafeFsError::Symlink(shown.to_string()))
        }
        Err(e) => Err(io_at(shown, e)),
    }
}

fn is_symlink(dir: impl AsFd, name: &std::ffi::OsStr) -> bool {
    fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY
}

/// The directory `rel` below `root` (`root` itself is gantry's and opened as it is).
pub fn open_dir(root: &Path, rel: &Path) -> Result<OwnedFd, SafeFsError> {
    let shown = rel.display().to_string();
    let mut fd = openat(
        nix::fcntl::AT_FDCWD,
        root,
        dir_flags() | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_at(&root.display().to_string(), e))?;
    for name in parts(rel)? {
        fd = open_one(&fd, name, dir_flags(), &shown)?;
    }
    Ok(fd)
}

/// The regular file `rel` below `root`, opened for reading with no symlink followed.
pub fn open_file(root: &Path, rel: &Path) -> Result<File, SafeFsError> {
    let shown = rel.display().to_string();
    let all = parts(rel)?;
    let Some((last, dirs)) = all.split_last() else {
        return Err(SafeFsError::NotAFile(shown));
    };
    let dir = open_dir(root, &dirs.iter().collect::<std::path::PathBuf>())
        .map_err(|e| rename(e, &shown))?;
    // O_NONBLOCK: a FIFO planted there must not block the open.
    let fd = open_one(&dir, last, OFlag::O_RDONLY | OFlag::O_NONBLOCK, &shown)?;
    let st = fstat(&fd).map_err(|e| io_at(&shown, e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(SafeFsError::NotAFile(shown));
    }
    let file = File::from(fd);
    clear_nonblock(&file).map_err(|e| io_at(&shown, e))?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    fcntl(file, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).map(|_| ())
}

/// Errors about a directory on the way name the whole path asked for.
fn rename(e: SafeFsError, shown: &str) -> SafeFsError {
    match e {
        SafeFsError::Symlink(_) => SafeFsError::Symlink(shown.to_string()),
        SafeFsError::Io { source, .. } => SafeFsError::Io {
            path: shown.to_string(),
            source,
        },
        other => other,
    }
}

/// The whole file `rel` below `root`, at most `cap` bytes (larger is an error, nothing read).
pub fn read(root: &Path, rel: &Path, cap: u64) -> Result<Vec<u8>, SafeFsError> {
    let shown = rel.display().to_string();
    let file = open_file(root, rel)?;
    let len = file
        .metadata()
        .map_err(|e| SafeFsError::Io {
            path: shown.clone(),
            source: e,
        })?
        .len();
    if len > cap {
        return Err(SafeFsError::TooLarge(shown, cap));
    }
    let mut out = Vec::with_capacity(len as usize);
    file.take(cap + 1)
        .read_to_end(&mut out)
        .map_err(|source| SafeFsError::Io {
            path: shown.clone(),
            source,
        })?;
    if out.len() as u64 > cap {
        return Err(SafeFsError::TooLarge(shown, cap));
    }
    Ok(out)
}

/// [`read`] as UTF-8 text.
pub fn read_text(root: &Path, rel: &Path, cap: u64) -> Result<String, SafeFsError> {
    let bytes = read(root, rel, cap)?;
    String::from_utf8(bytes).map_err(|e| SafeFsError::Io {
        path: rel.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// Checks that no existing component of `rel` below `root` is a symlink (a missing tail is
/// fine: Docker creates it below what was checked). For bind mount sources, which Docker
/// resolves itself when it creates the container.
pub fn check_no_symlink(root: &Path, rel: &Path) -> Result<(), SafeFsError> {
    let shown = rel.display().to_string();
    let mut dir = open_dir(root, Path::new(""))?;
    for name in parts(rel)? {
        if is_symlink(&dir, name) {
            return Err(SafeFsError::Symlink(shown));
        }
        match open_one(&dir, name, OFlag::O_RDONLY | OFlag::O_PATH, &shown) {
            Ok(fd) => dir = fd,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How deep [`walk_files`] goes (a bundle made by a ZIP tool is never this deep).
pub const MAX_WALK_DEPTH: usize = 64;

/// The subdirectory `name` of the open directory `dir`, not following a symlink.
pub fn open_subdir(dir: &OwnedFd, name: &str) -> Result<OwnedFd, SafeFsError> {
    open_one(dir, std::ffi::OsStr::new(name), dir_flags(), name)
}

/// Every regular file below `root` (relative paths with `/`, sorted), symlinks and special
/// files left out, at most [`MAX_WALK_DEPTH`] directories deep.
pub fn walk_files(root: &Path) -> Result<Vec<String>, SafeFsError> {
    fn walk(dir: &OwnedFd, prefix: &str, depth: usize, out: &mut Vec<String>) -> io::Result<()> {
        for (name, kind) in entries(dir)? {
            let Ok(name) = name.into_string() else {
                continue;
            };
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            match kind {
                Kind::File { .. } => out.push(rel),
                Kind::Dir if depth < MAX_WALK_DEPTH => {
                    // Swapped for a symlink since it was listed: left out.
                    if let Ok(sub) = open_subdir(dir, &name) {
                        walk(&sub, &rel, depth + 1, out)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    let top = open_dir(root, Path::new(""))?;
    let mut out = Vec::new();
    walk(&top, "", 0, &mut out).map_err(|source| SafeFsError::Io {
        path: root.display().to_string(),
        source,
    })?;
    out.sort();
    Ok(out)
}

/// The entries of the directory `dir` (an open descriptor): name and whether each is a
/// directory, a regular file, or something else (symlinks included), by `lstat`.
pub fn entries(dir: &OwnedFd) -> io::Result<Vec<(std::ffi::OsString, Kind)>> {
    let mut listed = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io::Error::from)?;
    let mut out = Vec::new();
    for entry in listed.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let name = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let kind = match fstatat(dir.as_fd(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Kind::of(
                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
                st.st_size,
            ),
            Err(_) => Kind::Other,
        };
        out.push((name.to_os_string(), kind));
    }
    Ok(out)
}

/// What a directory entry is (symlinks are `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Other,
}

impl Kind {
    fn of(fmt: SFlag, size: i64) -> Self {
        if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFREG {
            Kind::File {
                size: u64::try_from(size).unwrap_or(0),
            }
        } else {
            Kind::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f"), "hello").unwrap();
        std::fs::write(d.path().join("outside"), "secret").unwrap();
        symlink(d.path().join("outside"), d.path().join("a/link")).unwrap();
        symlink(d.path().join("a/b"), d.path().join("dirlink")).unwrap();
        d
    }

    #[test]
    fn reads_files_and_refuses_symlinks_anywhere() {
        let d = tree();
        let r = d.path();
        assert_eq!(read(r, Path::new("a/b/f"), 100).unwrap(), b"hello");
        assert_eq!(read_text(r, Path::new("./a/b/f"), 100).unwrap(), "hello");
        let kind = |rel: &str, cap: u64| match read(r, Path::new(rel), cap) {
            Err(SafeFsError::TooLarge(..)) => "too large",
            Err(SafeFsError::Symlink(_)) => "symlink",
            Err(SafeFsError::Escapes(_)) => "escapes",
            Err(SafeFsError::NotAFile(_)) => "not a file",
            Err(SafeFsError::Io { .. }) => "io",
            Ok(_) => "read",
        };
        for (rel, cap, want) in [
            ("a/b/f", 3, "too large"),
            ("a/link", 100, "symlink"),
            ("dirlink/f", 100, "symlink"),
            ("../x", 100, "escapes"),
            ("a/b", 100, "not a file"),
        ] {
            assert_eq!(kind(rel, cap), want, "{rel}");
        }
        assert!(read(r, Path::new("a/nope"), 100)
            .unwrap_err()
            .is_not_found());
    }

    #[test]
    fn bind_sources_with_a_symlink_on_the_way_are_refused() {
        let d = tree();
        let r = d.path();
        check_no_symlink(r, Path::new("a/b")).unwrap();
        check_no_symlink(r, Path::new("a/b/new/deeper")).unwrap();
        check_no_symlink(r, Path::new("")).unwrap();
        assert!(matches!(
            check_no_symlink(r, Path::new("a/link")),
            Err(SafeFsError::Symlink(_))
        ));
        assert!(matches!(
            check_no_symlink(r, Path::new("dirlink/x")),
            Err(SafeFsError::Symlink(_))
        ));
    }

    #[test]
    fn a_fifo_does_not_block() {
        let d = tree();
        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(
            read(d.path(), Path::new("fifo"), 10),
            Err(SafeFsError::NotAFile(_))
        ));
    }

    #[test]
    fn entries_are_listed_without_following() {
        let d = tree();
        let fd = open_dir(d.path(), Path::new("a")).unwrap();
        let mut e = entries(&fd).unwrap();
        e.sort();
        assert_eq!(
            e,
            vec![("b".into(), Kind::Dir), ("link".into(), Kind::Other)]
        );
    }
}
