//! Unpacking a `bind_contents` archive (.tar.gz) into a service's directory, with the rules of
//! app bundles: entry names are checked like a bundle's (no absolute paths, no `..`, no
//! backslashes), nothing is written through a link, links may not point out of the directory,
//! devices and FIFOs are refused, and the entry count, the unpacked size and the
//! unpacked:compressed ratio are capped while the bytes flow (a bomb is stopped, not
//! unpacked). Runs in a blocking task; a cancel is checked between chunks.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::rc::Rc;

use tar::EntryType;
use tokio_util::sync::CancellationToken;

use crate::core::apps::bundle::{check_name, ByteSize};
use crate::core::CoreError;

#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// All files together, unpacked.
    pub max_bytes: u64,
    pub max_entries: usize,
    /// Largest unpacked:compressed ratio once more than `ratio_min_bytes` are unpacked.
    pub max_ratio: u64,
    pub ratio_min_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the archive is not a readable .tar.gz: {0}")]
    Read(String),
    #[error("entry {name} {reason}")]
    UnsafeName { name: String, reason: &'static str },
    #[error("entry {name} links to {target}, outside the service's directory")]
    LinkOut { name: String, target: String },
    #[error("entry {0} is a device, FIFO or other special file; only files, directories and links are unpacked")]
    Special(String),
    #[error("entry {0} appears more than once in the archive")]
    Duplicate(String),
    #[error("entry {name} lies under {parent}, which the archive holds as a file or link")]
    NotUnderDir { name: String, parent: String },
    #[error("the archive holds more than {0} entries (duxcore.bind_contents_max_entries)")]
    TooManyEntries(usize),
    #[error("the archive unpacks to more than {} (duxcore.bind_contents_max_unpacked_bytes)", ByteSize(*.0))]
    TooLarge(u64),
    #[error("the archive expands more than {0}:1 (a gzip bomb?)")]
    Ratio(u64),
    #[error("unpacking was cancelled")]
    Cancelled,
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
}

impl From<UnpackError> for CoreError {
    fn from(e: UnpackError) -> Self {
        match e {
            UnpackError::Cancelled => CoreError::Cancelled(e.to_string()),
            UnpackError::Write { path, source } => {
                CoreError::io(format!("cannot write {path}"), source)
            }
            e => CoreError::Invalid(format!("bind_contents: {e}")),
        }
    }
}

/// Counts the compressed bytes the decoder has read.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Dir,
    File,
    Link,
}

struct Unpacker<'a> {
    dest: &'a Path,
    limits: UnpackLimits,
    cancel: &'a CancellationToken,
    compressed: Rc<Cell<u64>>,
    unpacked: u64,
    taken: HashMap<String, Taken>,
}

/// Unpacks the .tar.gz `archive` into the (empty) directory `dest`.
pub fn unpack_tar_gz(
    archive: &Path,
    dest: &Path,
    limits: UnpackLimits,
    cancel: &CancellationToken,
) -> Result<(), UnpackError> {
    let file = File::open(archive).map_err(|e| UnpackError::Read(e.to_string()))?;
    let compressed = Rc::new(Cell::new(0));
    let counted = Counted {
        inner: io::BufReader::with_capacity(64 << 10, file),
        count: compressed.clone(),
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(counted));
    let mut u = Unpacker {
        dest,
        limits,
        cancel,
        compressed,
        unpacked: 0,
        taken: HashMap::new(),
    };
    let entries = tar
        .entries()
        .map_err(|e| UnpackError::Read(e.to_string()))?;
    for (n, entry) in entries.enumerate() {
        if n >= limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let mut entry = entry.map_err(|e| UnpackError::Read(e.to_string()))?;
        u.entry(&mut entry)?;
    }
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, UnpackError> {
    std::str::from_utf8(bytes).map_err(|_| UnpackError::UnsafeName {
        name: String::from_utf8_lossy(bytes).into_owned(),
        reason: "has a name that is not UTF-8",
    })
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write {
        path: path.display().to_string(),
        source,
    }
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        if self.cancel.is_cancelled() {
            return Err(UnpackError::Cancelled);
        }
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = utf8(&entry.path_bytes())?.to_string();
        let name = match check_name(&raw) {
            Ok(n) => n,
            // The archive's root itself ("./"): already there.
            Err(_) if kind == EntryType::Directory && raw.trim_matches(['.', '/']).is_empty() => {
                return Ok(())
            }
            Err(reason) => return Err(UnpackError::UnsafeName { name: raw, reason }),
        };
        self.parents(&name)?;
        match self.taken.get(&name) {
            Some(Taken::Dir) if kind == EntryType::Directory => return Ok(()),
            Some(_) => return Err(UnpackError::Duplicate(name)),
            None => {}
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let path = self.dest.join(&name);
        let taken = match kind {
            EntryType::Regular | EntryType::Continuous => {
                self.file(entry, &path, mode)?;
                Taken::File
            }
            EntryType::Directory => {
                DirBuilder::new()
                    .mode(mode | 0o700)
                    .create(&path)
                    .map_err(write_err(&path))?;
                Taken::Dir
            }
            EntryType::Symlink => {
                let target = utf8(&entry.link_name_bytes().unwrap_or_default())?.to_string();
                self.symlink(&name, &target, &path)?;
                Taken::Link
            }
            EntryType::Link => {
                let target = utf8(&entry.link_name_bytes().unwrap_or_default())?.to_string();
                self.hard_link(&name, &target, &path)?;
                Taken::File
            }
            _ => return Err(UnpackError::Special(name)),
        };
        self.taken.insert(name, taken);
        Ok(())
    }

    /// Creates the missing directories above `name`; refuses a path through a file or link.
    fn parents(&mut self, name: &str) -> Result<(), UnpackError> {
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            let parent = &name[..end + i];
            end += i + 1;
            match self.taken.get(parent) {
                Some(Taken::Dir) => continue,
                Some(_) => {
                    return Err(UnpackError::NotUnderDir {
                        name: name.to_string(),
                        parent: parent.to_string(),
                    })
                }
                None => {
                    let path = self.dest.join(parent);
                    fs::create_dir(&path).map_err(write_err(&path))?;
                    self.taken.insert(parent.to_string(), Taken::Dir);
                }
            }
        }
        Ok(())
    }

    /// Writes a file (never through a link: a new file, `O_NOFOLLOW`), counting its bytes
    /// against the size and ratio caps as they come.
    fn file<R: Read>(&mut self, src: &mut R, path: &Path, mode: u32) -> Result<(), UnpackError> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode | 0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(write_err(path))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| UnpackError::Read(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            self.count(n as u64)?;
            out.write_all(&buf[..n]).map_err(write_err(path))?;
        }
    }

    fn count(&mut self, n: u64) -> Result<(), UnpackError> {
        if self.cancel.is_cancelled() {
            return Err(UnpackError::Cancelled);
        }
        self.unpacked += n;
        let l = &self.limits;
        if self.unpacked > l.max_bytes {
            return Err(UnpackError::TooLarge(l.max_bytes));
        }
        let compressed = self.compressed.get().max(1);
        if self.unpacked > l.ratio_min_bytes
            && self.unpacked > compressed.saturating_mul(l.max_ratio)
        {
            return Err(UnpackError::Ratio(l.max_ratio));
        }
        Ok(())
    }

    /// A symbolic link whose target, read from the link's own directory, stays inside.
    fn symlink(&self, name: &str, target: &str, path: &Path) -> Result<(), UnpackError> {
        let out = || UnpackError::LinkOut {
            name: name.to_string(),
            target: target.to_string(),
        };
        if target.is_empty() || target.starts_with('/') || target.contains('\\') {
            return Err(out());
        }
        let mut at: Vec<&str> = name.split('/').collect();
        at.pop();
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    at.pop().ok_or_else(out)?;
                }
                p => at.push(p),
            }
        }
        std::os::unix::fs::symlink(target, path).map_err(write_err(path))
    }

    /// A hard link to a file this archive already unpacked (never to anything else).
    fn hard_link(&self, name: &str, target: &str, path: &Path) -> Result<(), UnpackError> {
        let normalised = check_name(target).ok();
        match normalised.as_ref().and_then(|t| self.taken.get(t)) {
            Some(Taken::File) => {
                let from = self.dest.join(normalised.unwrap_or_default());
                fs::hard_link(&from, path).map_err(write_err(path))
            }
            _ => Err(UnpackError::LinkOut {
                name: name.to_string(),
                target: target.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 100,
        max_ratio: 200,
        ratio_min_bytes: 64 << 10,
    };

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// A .tar.gz of `entries`, names written raw (the tar crate's builder refuses `..`).
    fn tgz(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, data, kind, link): (&str, &[u8], EntryType, &str) = match e {
                E::File(n, d) => (n, d, EntryType::Regular, ""),
                E::Dir(n) => (n, b"", EntryType::Directory, ""),
                E::Sym(n, t) => (n, b"", EntryType::Symlink, t),
                E::Hard(n, t) => (n, b"", EntryType::Link, t),
                E::Fifo(n) => (n, b"", EntryType::Fifo, ""),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn unpack(entries: &[E], limits: UnpackLimits) -> (tempfile::TempDir, Result<(), UnpackError>) {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar.gz");
        fs::write(&archive, tgz(entries)).unwrap();
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        let r = unpack_tar_gz(&archive, &dest, limits, &CancellationToken::new());
        (tmp, r)
    }

    #[test]
    fn files_dirs_and_inner_links_unpack() {
        let (tmp, r) = unpack(
            &[
                E::Dir("./"),
                E::File("a/b/c.txt", b"hello"),
                E::Dir("a/b"),
                E::Sym("a/link", "b/c.txt"),
                E::Sym("a/b/up", "../b"),
                E::Hard("a/hard", "a/b/c.txt"),
            ],
            LIMITS,
        );
        r.unwrap();
        let out = tmp.path().join("out");
        assert_eq!(fs::read(out.join("a/b/c.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(out.join("a/link")).unwrap(), b"hello");
        assert_eq!(fs::read(out.join("a/hard")).unwrap(), b"hello");
    }

    #[test]
    fn escapes_links_out_and_special_files_are_refused() {
        let cases: Vec<(Vec<E>, &str)> = vec![
            (vec![E::File("../evil", b"x")], "escapes"),
            (vec![E::File("/etc/evil", b"x")], "absolute"),
            (vec![E::File("a\\..\\evil", b"x")], "backslash"),
            (vec![E::Sym("l", "/etc")], "outside"),
            (vec![E::Sym("a/l", "../../etc")], "outside"),
            (vec![E::Hard("h", "/etc/shadow")], "outside"),
            (vec![E::Sym("l", "."), E::File("l/x", b"x")], "lies under"),
            (
                vec![E::File("f", b"1"), E::File("f", b"2")],
                "more than once",
            ),
            (vec![E::Fifo("p")], "special"),
        ];
        for (entries, says) in cases {
            let (tmp, r) = unpack(&entries, LIMITS);
            let e = r.unwrap_err().to_string();
            assert!(e.contains(says), "{e} (expected {says:?})");
            assert!(!tmp.path().join("evil").exists());
        }
    }

    #[test]
    fn size_ratio_and_count_caps_stop_the_unpacking() {
        let zeros = vec![0u8; 2 << 20];
        let (_t, r) = unpack(&[E::File("big", &zeros)], LIMITS);
        assert!(matches!(r, Err(UnpackError::Ratio(200))), "{r:?}");
        let roomy = UnpackLimits {
            max_ratio: 1_000_000,
            ..LIMITS
        };
        let (_t, r) = unpack(&[E::File("big", &zeros)], roomy);
        assert!(matches!(r, Err(UnpackError::TooLarge(_))), "{r:?}");
        let few = UnpackLimits {
            max_entries: 2,
            ..LIMITS
        };
        let files = [E::File("1", b""), E::File("2", b""), E::File("3", b"")];
        let (_t, r) = unpack(&files, few);
        assert!(matches!(r, Err(UnpackError::TooManyEntries(2))), "{r:?}");
    }
}
