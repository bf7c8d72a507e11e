//! An app bundle: the app ZIP, checked before anything in it is trusted.
//!
//! The zip crate has no bomb limits of its own (upstream considers that the caller's job), so
//! [`Bundle::open`] checks every central-directory entry against [`BundleLimits`] before any
//! byte is inflated, and every read goes through [`EntryReader`], which stops one byte past
//! the size the entry declared: a lying header cannot make an entry inflate further than what
//! the checks saw. Entries outside `docker/` are read once in full at open (sizes and CRCs);
//! image tarballs, which can be gigabytes, are only checked while they stream to Docker.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zip::read::ZipFile;
use zip::{CompressionMethod, ZipArchive};

use super::stream::LocalEntry;
use super::{AppConfig, AppId};
use crate::core::ErrorKind;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub const CONFIG_FILE: &str = "config.yml";
/// Compose file names, in the order they are looked for; the first present wins.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];
pub const ENV_FILE: &str = ".env";
/// A template's compose file: its services have a `build:` context.
pub const BUILD_FILE: &str = "docker-compose-build.yml";

/// What a bundle holds: an app instance, or a template whose images are built on the device
/// from the build contexts it carries ([`BUILD_FILE`] instead of a compose file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BundleKind {
    #[default]
    App,
    Template,
}

impl BundleKind {
    /// The compose file names the bundle is looked up by, first match wins.
    fn compose_files(self) -> &'static [&'static str] {
        match self {
            BundleKind::App => &COMPOSE_FILES,
            BundleKind::Template => &[BUILD_FILE],
        }
    }

    fn missing_compose(self) -> BundleError {
        match self {
            BundleKind::App => BundleError::MissingCompose,
            BundleKind::Template => BundleError::MissingBuildFile,
        }
    }
}
/// Image tarballs live here; nothing under it is extracted into the store.
const IMAGE_DIR: &str = "docker";
const IMAGE_SUFFIXES: [&str; 3] = [".tar", ".tgz", ".tar.gz"];

// File types in the upper bits of a unix mode (the ZIP's external attributes).
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// What a bundle may be; the defaults are those of docs/DESIGN-apps.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLimits {
    pub max_zip_bytes: u64,
    pub max_entries: usize,
    /// Uncompressed, per entry.
    pub max_entry_bytes: u64,
    /// Uncompressed, all entries together.
    pub max_total_bytes: u64,
    /// Largest uncompressed:compressed ratio of an entry larger than `ratio_min_bytes`.
    pub max_ratio: u64,
    /// Entries up to this size skip the ratio check (small text compresses very well).
    pub ratio_min_bytes: u64,
    /// config.yml, the compose file and `.env`, which are read into memory.
    pub max_text_bytes: u64,
}

impl Default for BundleLimits {
    fn default() -> Self {
        Self {
            max_zip_bytes: 8 * GIB,
            max_entries: 10_000,
            max_entry_bytes: 8 * GIB,
            max_total_bytes: 16 * GIB,
            max_ratio: 200,
            ratio_min_bytes: MIB,
            max_text_bytes: MIB,
        }
    }
}

/// A byte count for people: "1.5 GiB", "300 bytes".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n >= unit {
                let whole = n / unit;
                let tenth = n % unit * 10 / unit;
                return if tenth == 0 {
                    write!(f, "{whole} {name}")
                } else {
                    write!(f, "{whole}.{tenth} {name}")
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the bundle: {0}")]
    Io(String),
    #[error("the bundle is {}; at most {} is allowed", ByteSize(*size), ByteSize(*max))]
    TooLarge { size: u64, max: u64 },
    #[error("the bundle is not a readable ZIP archive (truncated or damaged upload?): {0}")]
    NotZip(String),
    #[error("the bundle has {count} entries; at most {max} are allowed")]
    TooManyEntries { count: u64, max: usize },
    #[error("entry {name} {reason}")]
    UnsafeName { name: String, reason: &'static str },
    #[error("entry {0} is a symbolic link; a bundle may hold only files and directories")]
    Symlink(String),
    #[error("entry {0} is a device, FIFO or socket; a bundle may hold only files and directories")]
    SpecialFile(String),
    #[error("entry {0} is encrypted; gantry cannot read password-protected ZIPs: create the bundle without a password")]
    Encrypted(String),
    #[error("entry {name} uses compression method {method}; create the bundle with deflate or without compression")]
    Unsupported { name: String, method: String },
    #[error("entry {0} appears more than once in the bundle")]
    Duplicate(String),
    #[error("entry {name} lies under {parent}, which the bundle also holds as a file")]
    FileAsDir { name: String, parent: String },
    #[error("entries {first} and {second} share the same bytes of the ZIP (an overlapping-entry ZIP bomb?)")]
    Overlap { first: String, second: String },
    #[error("entry {name} is {} uncompressed; at most {} is allowed per entry", ByteSize(*size), ByteSize(*max))]
    EntryTooLarge { name: String, size: u64, max: u64 },
    #[error("the bundle holds {} uncompressed; at most {} is allowed", ByteSize(*size), ByteSize(*max))]
    TotalTooLarge { size: u64, max: u64 },
    #[error("entry {name} expands {ratio}:1, more than the allowed {max}:1 (a ZIP bomb?)")]
    Ratio { name: String, ratio: u64, max: u64 },
    #[error("entry {name} is damaged: {detail}")]
    Corrupt { name: String, detail: String },
    #[error("the bundle has no config.yml at its top level{hint}")]
    MissingConfig { hint: String },
    #[error("config.yml is not valid: {0}")]
    BadConfig(String),
    #[error("config.yml has no {0}; the app id is built from Name and Version")]
    ConfigMissing(&'static str),
    #[error("the bundle has no compose file at its top level (compose.yaml, compose.yml, docker-compose.yml or docker-compose.yaml)")]
    MissingCompose,
    #[error("the template has no {BUILD_FILE} at its top level (the compose file whose services have a build context)")]
    MissingBuildFile,
    #[error("{name} is {}; at most {} is allowed", ByteSize(*size), ByteSize(*max))]
    TextTooLarge { name: String, size: u64, max: u64 },
    #[error("{0} is not UTF-8 text")]
    NotText(String),
    #[error("the bundle has no file {0}")]
    NoSuchEntry(String),
}

impl BundleError {
    /// Carries this error through `Read` (as an `io::Error`); `From<io::Error>` unwraps it.
    fn into_io(self) -> io::Error {
        let kind = match self {
            BundleError::Io(_) => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

impl From<io::Error> for BundleError {
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<BundleError>())
        {
            Some(inner) => inner.clone(),
            None => BundleError::Io(e.to_string()),
        }
    }
}

impl BundleError {
    /// A bundle that fails a check is the caller's to fix; only reading it can fail here.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BundleError::Io(_) => ErrorKind::Failed,
            _ => ErrorKind::Invalid,
        }
    }
}

/// A file in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// Normalised: `/`-separated, no `.` or empty parts, no trailing `/`.
    pub name: String,
    /// Uncompressed, as declared (and enforced on read).
    pub size: u64,
}

#[derive(Debug)]
struct Entry {
    index: usize,
    name: String,
    size: u64,
    is_dir: bool,
    executable: bool,
}

impl Entry {
    fn is_image_dir_content(&self) -> bool {
        self.name
            .strip_prefix(IMAGE_DIR)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// An opened, checked app ZIP.
#[derive(Debug)]
pub struct Bundle {
    archive: ZipArchive<File>,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    config: AppConfig,
    compose_name: &'static str,
    compose: String,
    env: Option<String>,
    images: Vec<BundleEntry>,
}

impl Bundle {
    /// Opens and checks the app ZIP at `path` (blocking: call it from `spawn_blocking`).
    #[cfg_attr(not(feature = "pool"), allow(dead_code))]
    pub fn open(path: &Path, limits: &BundleLimits) -> Result<Bundle, BundleError> {
        Self::open_kind(path, limits, BundleKind::App)
    }

    /// Opens and checks the ZIP at `path`, an app or a template (blocking).
    pub fn open_kind(
        path: &Path,
        limits: &BundleLimits,
        kind: BundleKind,
    ) -> Result<Bundle, BundleError> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        if size > limits.max_zip_bytes {
            return Err(BundleError::TooLarge {
                size,
                max: limits.max_zip_bytes,
            });
        }
        // Checked before the crate parses the central directory, which holds every entry
        // it declares in memory; and again after, for whatever the crate found.
        let too_many = |count: u64| {
            (count > limits.max_entries as u64).then_some(BundleError::TooManyEntries {
                count,
                max: limits.max_entries,
            })
        };
        if let Some(e) = too_many(declared_entry_count(&mut file)?) {
            return Err(e);
        }
        let mut archive = ZipArchive::new(file).map_err(|e| BundleError::NotZip(e.to_string()))?;
        if let Some(e) = too_many(archive.len() as u64) {
            return Err(e);
        }
        // The crate keys entries by name, so an exact duplicate has already been folded away.
        if archive.has_duplicate_names() {
            let name = duplicate_name(path, archive.central_directory_start())?
                .unwrap_or_else(|| "(unknown)".to_string());
            return Err(BundleError::Duplicate(name));
        }
        let entries = check_entries(&mut archive, limits)?;
        let by_name = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        let mut bundle = Bundle {
            archive,
            entries,
            by_name,
            config: AppConfig::default(),
            compose_name: COMPOSE_FILES[0],
            compose: String::new(),
            env: None,
            images: Vec::new(),
        };

        // Read everything but the image tarballs once, so sizes and CRCs are known good
        // before the import touches Docker.
        for i in 0..bundle.entries.len() {
            let entry = &bundle.entries[i];
            if !entry.is_dir && !entry.is_image_dir_content() {
                io::copy(&mut bundle.reader_at(i)?, &mut io::sink())?;
            }
        }

        bundle.config = bundle.read_config(limits)?;
        let compose_name = kind
            .compose_files()
            .iter()
            .copied()
            .find(|name| bundle.file_index(name).is_some())
            .ok_or_else(|| kind.missing_compose())?;
        bundle.compose_name = compose_name;
        bundle.compose = bundle
            .read_text(compose_name, limits)?
            .expect("found above");
        bundle.env = bundle.read_text(ENV_FILE, limits)?;
        bundle.images = bundle
            .entries
            .iter()
            .filter(|e| !e.is_dir && e.is_image_dir_content() && is_image_name(&e.name))
            .map(|e| BundleEntry {
                name: e.name.clone(),
                size: e.size,
            })
            .collect();
        bundle.images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(bundle)
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    pub fn id(&self) -> AppId {
        self.config.id()
    }

    /// Whether the bundle holds the file `name` (a path inside it, `/`-separated).
    pub fn contains_file(&self, name: &str) -> bool {
        self.file_index(name).is_some()
    }

    /// Which of [`COMPOSE_FILES`] (or [`BUILD_FILE`]) the bundle uses.
    pub fn compose_name(&self) -> &'static str {
        self.compose_name
    }

    pub fn compose_yaml(&self) -> &str {
        &self.compose
    }

    /// The bundle's `.env`, the source of `${VAR}` interpolation in the compose file.
    pub fn env_file(&self) -> Option<&str> {
        self.env.as_deref()
    }

    /// Image tarballs under `docker/` (`.tar`, `.tgz`, `.tar.gz`), sorted by name.
    pub fn images(&self) -> &[BundleEntry] {
        &self.images
    }

    /// What [`Bundle::extract_metadata`] writes: every file outside `docker/`.
    pub fn metadata_size(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| !e.is_dir && !e.is_image_dir_content())
            .map(|e| e.size)
            .sum()
    }

    /// A blocking reader for one file of the bundle, e.g. an image tarball to stream to
    /// Docker. Its `io::Error`s convert back into the `BundleError` they carry.
    pub fn entry_reader(&mut self, name: &str) -> Result<EntryReader<'_>, BundleError> {
        let i = self
            .file_index(name)
            .ok_or_else(|| BundleError::NoSuchEntry(name.to_string()))?;
        self.reader_at(i)
    }

    /// Writes every entry except `docker/*` into `dest` (an existing, empty directory),
    /// fsyncing each file and directory. Executable files stay executable (scripts that the
    /// compose file bind-mounts); nothing else of the ZIP's modes is kept.
    pub fn extract_metadata(&mut self, dest: &Path) -> Result<(), BundleError> {
        let mut dirs = BTreeSet::from([dest.to_path_buf()]);
        for i in 0..self.entries.len() {
            let entry = &self.entries[i];
            if entry.is_image_dir_content() {
                continue;
            }
            // Names were checked at open: only plain relative parts, nothing can escape.
            let path = dest.join(&entry.name);
            let mut parent = if entry.is_dir {
                Some(path.as_path())
            } else {
                path.parent()
            };
            while let Some(p) = parent.filter(|p| p.starts_with(dest)) {
                dirs.insert(p.to_path_buf());
                parent = p.parent();
            }
            if entry.is_dir {
                fs::create_dir_all(&path).map_err(at(&path))?;
                continue;
            }
            if let Some(p) = path.parent() {
                fs::create_dir_all(p).map_err(at(p))?;
            }
            let mode = if entry.executable { 0o755 } else { 0o644 };
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(at(&path))?;
            // Damage in the entry arrives as the BundleError it is; the rest is local I/O.
            io::copy(&mut self.reader_at(i)?, &mut out).map_err(|e| match e.into() {
                BundleError::Io(e) => BundleError::Io(format!("{}: {e}", path.display())),
                bundle_error => bundle_error,
            })?;
            out.sync_all().map_err(at(&path))?;
        }
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(at(&dir))?;
        }
        Ok(())
    }

    /// Checks that an entry streamed from its local header while the upload arrived is the
    /// entry the central directory lists under that name: same local header, sizes, method
    /// and CRC-32 (the streamed data's CRC was checked against the local header).
    pub fn verify_streamed(&mut self, local: &LocalEntry) -> Result<(), BundleError> {
        let mismatch = |what: &str| BundleError::Corrupt {
            name: local.name.clone(),
            detail: format!("its local header and the central directory disagree ({what})"),
        };
        let i = self
            .file_index(&local.name)
            .filter(|&i| self.images.iter().any(|e| e.name == self.entries[i].name))
            .ok_or_else(|| mismatch("the central directory lists no such image"))?;
        let file = self
            .archive
            .by_index_raw(self.entries[i].index)
            .map_err(|e| BundleError::NotZip(e.to_string()))?;
        let method: u16 = match file.compression() {
            CompressionMethod::Stored => 0,
            CompressionMethod::Deflated => 8,
            _ => u16::MAX,
        };
        if file.header_start() != local.header_start {
            return Err(mismatch("offset"));
        }
        if file.size() != local.size || file.compressed_size() != local.compressed {
            return Err(mismatch("size"));
        }
        if method != local.method {
            return Err(mismatch("compression method"));
        }
        if file.crc32() != local.crc {
            return Err(mismatch("CRC-32"));
        }
        Ok(())
    }

    fn file_index(&self, name: &str) -> Option<usize> {
        self.by_name
            .get(name)
            .copied()
            .filter(|&i| !self.entries[i].is_dir)
    }

    fn reader_at(&mut self, i: usize) -> Result<EntryReader<'_>, BundleError> {
        let entry = &self.entries[i];
        let name = entry.name.clone();
        let file = self
            .archive
            .by_index(entry.index)
            .map_err(|e| BundleError::Corrupt {
                name: name.clone(),
                detail: e.to_string(),
            })?;
        Ok(Bounded::new(file, name, entry.size))
    }

    fn read_text(
        &mut self,
        name: &str,
        limits: &BundleLimits,
    ) -> Result<Option<String>, BundleError> {
        let Some(i) = self.file_index(name) else {
            return Ok(None);
        };
        let size = self.entries[i].size;
        if size > limits.max_text_bytes {
            return Err(BundleError::TextTooLarge {
                name: name.to_string(),
                size,
                max: limits.max_text_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        self.reader_at(i)?.read_to_end(&mut bytes)?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| BundleError::NotText(name.to_string()))
    }

    fn read_config(&mut self, limits: &BundleLimits) -> Result<AppConfig, BundleError> {
        let Some(text) = self.read_text(CONFIG_FILE, limits)? else {
            // A common mistake: zipping the app's folder instead of its contents.
            let nested = self.entries.iter().find(|e| {
                !e.is_dir && e.name.matches('/').count() == 1 && e.name.ends_with("/config.yml")
            });
            let hint = nested
                .map(|e| {
                    format!(
                        " (found {}: zip the folder's contents, not the folder)",
                        e.name
                    )
                })
                .unwrap_or_default();
            return Err(BundleError::MissingConfig { hint });
        };
        let config: AppConfig =
            serde_norway::from_str(&text).map_err(|e| BundleError::BadConfig(e.to_string()))?;
        for (key, value) in [("Name", &config.name), ("Version", &config.version)] {
            if value.trim().is_empty() {
                return Err(BundleError::ConfigMissing(key));
            }
            if value.chars().any(char::is_control) {
                return Err(BundleError::BadConfig(format!(
                    "{key} must not contain control characters"
                )));
            }
        }
        let id = config.id();
        if id.slug().is_empty() {
            return Err(BundleError::BadConfig(format!(
                "the app id \"{id}\" needs an ASCII letter or digit (it names the compose project)"
            )));
        }
        // The id names the app's directory in the store.
        if id.dir_name().len() > 255 {
            return Err(BundleError::BadConfig(format!(
                "Name and Version are too long: the app id \"{id}\" must fit a file name"
            )));
        }
        Ok(config)
    }
}

/// Reads one entry, failing once it yields more than its declared size (the limits were
/// checked against that size) or ends short of it. Reads through `take(declared + 1)`, so a
/// bomb is never inflated further than one byte past the checked size.
pub struct Bounded<R> {
    inner: io::Take<R>,
    name: String,
    declared: u64,
    read: u64,
}

pub type EntryReader<'a> = Bounded<ZipFile<'a, File>>;

impl<R: Read> Bounded<R> {
    pub(super) fn new(inner: R, name: String, declared: u64) -> Self {
        Self {
            inner: inner.take(declared.saturating_add(1)),
            name,
            declared,
            read: 0,
        }
    }

    fn corrupt(&self, detail: String) -> io::Error {
        BundleError::Corrupt {
            name: self.name.clone(),
            detail,
        }
        .into_io()
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof => self.corrupt(e.to_string()),
            _ => e,
        })?;
        self.read += n as u64;
        if self.read > self.declared {
            return Err(self.corrupt(format!(
                "it holds more than the {} its header declares",
                ByteSize(self.declared)
            )));
        }
        if n == 0 && !buf.is_empty() && self.read < self.declared {
            return Err(self.corrupt(format!(
                "it ends after {} of the {} its header declares",
                ByteSize(self.read),
                ByteSize(self.declared)
            )));
        }
        Ok(n)
    }
}

/// A local file error (while extracting), naming the file.
fn at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |e| BundleError::Io(format!("{}: {e}", path.display()))
}

/// Checks an entry name and returns it normalised, or why it is refused.
pub(crate) fn check_name(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    if raw.contains('\0') {
        return Err("has a NUL byte in its name");
    }
    if raw.starts_with('/') {
        return Err("is an absolute path");
    }
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("is an absolute Windows path");
    }
    if raw.contains('\\') {
        return Err(
            "has a backslash in its name (a Windows path that could escape the bundle); use /",
        );
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("escapes the bundle"),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err("has an empty name");
    }
    Ok(parts.join("/"))
}

/// An image tarball's (normalised) name: `docker/...` ending in `.tar`, `.tgz`, `.tar.gz`.
pub(super) fn is_image_path(name: &str) -> bool {
    name.strip_prefix(IMAGE_DIR)
        .is_some_and(|rest| rest.starts_with('/'))
        && is_image_name(name)
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    IMAGE_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

/// Every check that needs only the central directory and local headers.
fn check_entries(
    archive: &mut ZipArchive<File>,
    limits: &BundleLimits,
) -> Result<Vec<Entry>, BundleError> {
    let mut entries = Vec::with_capacity(archive.len());
    let mut seen = HashSet::new();
    // [local header start, data end) of each entry, to find entries sharing bytes.
    let mut ranges: Vec<(u64, u64, String)> = Vec::with_capacity(archive.len());
    let mut total: u64 = 0;
    let dir_start = archive.central_directory_start();

    for index in 0..archive.len() {
        let file = archive
            .by_index_raw(index)
            .map_err(|e| BundleError::NotZip(e.to_string()))?;
        let (name, mode) = check_kind(&file)?;
        let size = file.size();
        total = total.saturating_add(size);
        check_sizes(&name, size, file.compressed_size(), total, limits)?;
        let data_start = file.data_start().ok_or_else(|| BundleError::Corrupt {
            name: name.clone(),
            detail: "its local header cannot be read".into(),
        })?;
        let data_end = data_start.saturating_add(file.compressed_size());
        if data_end > dir_start {
            return Err(BundleError::Corrupt {
                name,
                detail: "its data runs into the ZIP's central directory (truncated archive?)"
                    .into(),
            });
        }
        ranges.push((file.header_start(), data_end, name.clone()));
        if !seen.insert(name.clone()) {
            return Err(BundleError::Duplicate(name));
        }
        entries.push(Entry {
            index,
            is_dir: file.is_dir(),
            executable: mode & S_IFMT != S_IFDIR && mode & 0o111 != 0,
            name,
            size,
        });
    }
    check_overlaps(ranges)?;
    check_file_as_dir(&entries)?;
    Ok(entries)
}

/// The entry's normalised name and unix mode, when its name is safe and it is a plain file
/// or directory, unencrypted, stored or deflated.
fn check_kind(file: &zip::read::ZipFile<'_, File>) -> Result<(String, u32), BundleError> {
    let raw_name = file.name().map(|n| n.into_owned()).unwrap_or_default();
    let name = check_name(&raw_name).map_err(|reason| BundleError::UnsafeName {
        name: raw_name.clone(),
        reason,
    })?;
    // Belt and braces: the crate's own judgement must agree.
    if file.enclosed_name().is_none() {
        return Err(BundleError::UnsafeName {
            name: raw_name,
            reason: "escapes the bundle",
        });
    }
    let mode = file.unix_mode().unwrap_or(0);
    match mode & S_IFMT {
        0 | S_IFREG | S_IFDIR => {}
        S_IFLNK => return Err(BundleError::Symlink(name)),
        _ => return Err(BundleError::SpecialFile(name)),
    }
    if file.encrypted() {
        return Err(BundleError::Encrypted(name));
    }
    let method = file.compression();
    if !matches!(
        method,
        CompressionMethod::Stored | CompressionMethod::Deflated
    ) {
        return Err(BundleError::Unsupported {
            name,
            method: method.to_string(),
        });
    }
    Ok((name, mode))
}

/// The entry's size, the running total and the compression ratio within the limits.
fn check_sizes(
    name: &str,
    size: u64,
    compressed: u64,
    total: u64,
    limits: &BundleLimits,
) -> Result<(), BundleError> {
    if size > limits.max_entry_bytes {
        return Err(BundleError::EntryTooLarge {
            name: name.to_string(),
            size,
            max: limits.max_entry_bytes,
        });
    }
    if total > limits.max_total_bytes {
        return Err(BundleError::TotalTooLarge {
            size: total,
            max: limits.max_total_bytes,
        });
    }
    if size > limits.ratio_min_bytes && size > compressed.saturating_mul(limits.max_ratio) {
        return Err(BundleError::Ratio {
            name: name.to_string(),
            ratio: size / compressed.max(1),
            max: limits.max_ratio,
        });
    }
    Ok(())
}

/// No two entries share bytes: `ranges` are [local header start, data end) with the name.
fn check_overlaps(mut ranges: Vec<(u64, u64, String)>) -> Result<(), BundleError> {
    ranges.sort_unstable();
    match ranges.windows(2).find(|w| w[0].1 > w[1].0) {
        Some(w) => Err(BundleError::Overlap {
            first: w[0].2.clone(),
            second: w[1].2.clone(),
        }),
        None => Ok(()),
    }
}

/// A file cannot also be a directory: `a` and `a/b` cannot both be extracted.
fn check_file_as_dir(entries: &[Entry]) -> Result<(), BundleError> {
    let files: HashSet<&str> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name.as_str())
        .collect();
    for e in entries {
        let mut parent = e.name.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if files.contains(p) {
                return Err(BundleError::FileAsDir {
                    name: e.name.clone(),
                    parent: p.to_string(),
                });
            }
            parent = p;
        }
    }
    Ok(())
}

/// The largest entry count that any end-of-central-directory record in the last 64 KiB
/// declares (the crate may settle on any of them), following ZIP64 locators. Records whose
/// central directory would start after them are skipped: nothing can be parsed from those.
fn declared_entry_count(file: &mut File) -> io::Result<u64> {
    const EOCD: &[u8] = b"PK\x05\x06";
    const LOCATOR: &[u8] = b"PK\x06\x07";
    const EOCD64: &[u8] = b"PK\x06\x06";
    let le16 = |b: &[u8]| u64::from(u16::from_le_bytes([b[0], b[1]]));
    let le32 = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let le64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));

    let len = file.seek(SeekFrom::End(0))?;
    // ZIP64 locator (20) + EOCD (22) + the longest comment.
    let tail_start = len.saturating_sub(20 + 22 + u64::from(u16::MAX));
    file.seek(SeekFrom::Start(tail_start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;

    let mut max = 0;
    for at in (0..tail.len().saturating_sub(21)).filter(|&i| &tail[i..i + 4] == EOCD) {
        let mut count = le16(&tail[at + 10..]);
        if le32(&tail[at + 16..]) > tail_start + at as u64 {
            count = 0;
        }
        if at >= 20 && &tail[at - 20..at - 16] == LOCATOR {
            let mut record = [0u8; 56];
            file.seek(SeekFrom::Start(le64(&tail[at - 12..])))?;
            if file.read_exact(&mut record).is_ok() && &record[..4] == EOCD64 {
                count = count.max(le64(&record[32..]));
            }
        }
        max = max.max(count);
    }
    file.rewind()?;
    Ok(max)
}

/// Walks the central directory for the first name listed twice (the crate only says that
/// there is one). Stops at anything that is not a central-directory header.
fn duplicate_name(path: &Path, dir_start: u64) -> Result<Option<String>, BundleError> {
    const SIGNATURE: u32 = 0x0201_4b50;
    let mut reader = BufReader::new(File::open(path)?);
    reader.seek(SeekFrom::Start(dir_start))?;
    let mut seen = HashSet::new();
    let mut header = [0u8; 46];
    while reader.read_exact(&mut header).is_ok() {
        if u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) != SIGNATURE {
            break;
        }
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as usize;
        let (name_len, rest) = (field(28), field(30) + field(32));
        let mut name = vec![0u8; name_len];
        reader.read_exact(&mut name)?;
        reader.seek_relative(rest as i64)?;
        let name = String::from_utf8_lossy(&name).into_owned();
        if !seen.insert(name.clone()) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Builds a ZIP in memory: names ending in `/` become directories, the rest deflated files.
#[cfg(test)]
pub fn build_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        if name.ends_with('/') {
            zip.add_directory(*name, options).unwrap();
        } else {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;

    use super::*;

    const CONFIG: &[u8] = b"Name: web\nVersion: 1.0\nFrontends:\n - Port: 54180\n";
    const COMPOSE: &[u8] = b"services:\n  web:\n    image: nginx\n";

    fn deflated() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
    }

    /// A ZIP holding config.yml and compose.yaml, then whatever `more` writes.
    fn zip_with(more: impl FnOnce(&mut zip::ZipWriter<io::Cursor<Vec<u8>>>)) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, data) in [("config.yml", CONFIG), ("compose.yaml", COMPOSE)] {
            zip.start_file(name, deflated()).unwrap();
            zip.write_all(data).unwrap();
        }
        more(&mut zip);
        zip.finish().unwrap().into_inner()
    }

    fn with_basics(extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut entries: Vec<(&str, &[u8])> =
            vec![("config.yml", CONFIG), ("compose.yaml", COMPOSE)];
        entries.extend_from_slice(extra);
        build_zip(&entries)
    }

    fn open_with(bytes: &[u8], limits: &BundleLimits) -> Result<Bundle, BundleError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        Bundle::open(file.path(), limits)
    }

    fn open(bytes: &[u8]) -> Result<Bundle, BundleError> {
        open_with(bytes, &BundleLimits::default())
    }

    fn open_err(bytes: &[u8]) -> BundleError {
        open(bytes).expect_err("the bundle must be refused")
    }

    /// Lets `f` edit the central-directory header of entry `name` (46 fixed bytes + name).
    fn patch_central(zip: &mut [u8], name: &str, f: impl FnOnce(&mut [u8])) {
        let at = (0..zip.len() - 46)
            .find(|&i| {
                zip[i..i + 4] == *b"PK\x01\x02"
                    && usize::from(u16::from_le_bytes([zip[i + 28], zip[i + 29]])) == name.len()
                    && zip[i + 46..].starts_with(name.as_bytes())
            })
            .expect("central header");
        f(&mut zip[at..at + 46 + name.len()]);
    }

    fn unsafe_reason(e: BundleError) -> (String, &'static str) {
        match e {
            BundleError::UnsafeName { name, reason } => (name, reason),
            other => panic!("expected UnsafeName, got {other:?}"),
        }
    }

    #[test]
    fn a_good_bundle_opens() {
        let zip = zip_with(|z| {
            for (name, data) in [
                (".env", &b"TAG=1"[..]),
                ("icon.svg", b"<svg/>"),
                ("docker/web.tar", b"tar bytes"),
                ("docker/db.tar.gz", b"gz bytes"),
                ("docker/base.TGZ", b"tgz bytes"),
                ("docker/notes.txt", b"not an image"),
            ] {
                z.start_file(name, deflated()).unwrap();
                z.write_all(data).unwrap();
            }
            z.add_directory("screenshots/", deflated()).unwrap();
            z.start_file("./scripts//run.sh", deflated().unix_permissions(0o755))
                .unwrap();
            z.write_all(b"#!/bin/sh\n").unwrap();
        });
        let mut bundle = open(&zip).unwrap();
        assert_eq!(bundle.id().as_str(), "web:1.0");
        assert_eq!(bundle.config().frontends.as_ref().unwrap()[0].port, 54180);
        assert_eq!(bundle.compose_name(), "compose.yaml");
        assert_eq!(bundle.compose_yaml().as_bytes(), COMPOSE);
        assert_eq!(bundle.env_file(), Some("TAG=1"));
        let images: Vec<_> = bundle.images().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            images,
            ["docker/base.TGZ", "docker/db.tar.gz", "docker/web.tar"]
        );
        assert_eq!(bundle.images()[2].size, 9);
        let metadata = CONFIG.len() + COMPOSE.len() + 5 + 6 + 10;
        assert_eq!(bundle.metadata_size(), metadata as u64);

        let mut tar = Vec::new();
        bundle
            .entry_reader("docker/web.tar")
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(tar, b"tar bytes");
        assert!(matches!(
            bundle.entry_reader("docker/nope.tar"),
            Err(BundleError::NoSuchEntry(_))
        ));
        assert!(matches!(
            bundle.entry_reader("screenshots"),
            Err(BundleError::NoSuchEntry(_))
        ));

        let dest = tempfile::tempdir().unwrap();
        bundle.extract_metadata(dest.path()).unwrap();
        let d = dest.path();
        assert_eq!(fs::read(d.join("config.yml")).unwrap(), CONFIG);
        assert_eq!(fs::read(d.join(".env")).unwrap(), b"TAG=1");
        assert!(d.join("screenshots").is_dir());
        assert!(!d.join("docker").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| fs::metadata(d.join(p)).unwrap().permissions().mode();
        assert_ne!(mode("scripts/run.sh") & 0o111, 0);
        assert_eq!(mode("icon.svg") & 0o111, 0);
    }

    #[test]
    fn compose_file_order() {
        let zip = build_zip(&[
            ("config.yml", CONFIG),
            ("docker-compose.yaml", b"a"),
            ("docker-compose.yml", b"b"),
            ("compose.yml", b"c"),
        ]);
        let bundle = open(&zip).unwrap();
        assert_eq!(bundle.compose_name(), "compose.yml");
        assert_eq!(bundle.compose_yaml(), "c");
        let zip = build_zip(&[("config.yml", CONFIG), ("docker-compose.yaml", b"a")]);
        assert_eq!(open(&zip).unwrap().compose_name(), "docker-compose.yaml");
    }

    #[test]
    fn zip_slip_is_refused() {
        let e = open_err(&with_basics(&[("../x", b"x")]));
        assert_eq!(e.to_string(), "entry ../x escapes the bundle");
        let (_, reason) = unsafe_reason(open_err(&with_basics(&[("a/../../x", b"x")])));
        assert_eq!(reason, "escapes the bundle");
        let (name, reason) = unsafe_reason(open_err(&with_basics(&[("/etc/x", b"x")])));
        assert_eq!((name.as_str(), reason), ("/etc/x", "is an absolute path"));
    }

    #[test]
    fn windows_paths_are_refused() {
        let (name, reason) = unsafe_reason(open_err(&with_basics(&[("..\\x", b"x")])));
        assert_eq!(name, "..\\x");
        assert!(reason.contains("backslash"), "{reason}");
        let (name, reason) = unsafe_reason(open_err(&with_basics(&[("C:\\x", b"x")])));
        assert_eq!(name, "C:\\x");
        assert_eq!(reason, "is an absolute Windows path");
        let (_, reason) = unsafe_reason(open_err(&with_basics(&[("c:/x", b"x")])));
        assert_eq!(reason, "is an absolute Windows path");
    }

    #[test]
    fn check_name_normalises() {
        assert_eq!(check_name("./a//b/").unwrap(), "a/b");
        assert_eq!(check_name("a/./b").unwrap(), "a/b");
        assert!(check_name("a/b/..").is_err());
        assert!(check_name("./").is_err());
        assert!(check_name("a\0b").is_err());
    }

    #[test]
    fn symlinks_are_refused() {
        let zip = zip_with(|z| z.add_symlink("link", "/etc/shadow", deflated()).unwrap());
        let e = open_err(&zip);
        assert_eq!(e, BundleError::Symlink("link".into()));
        assert!(e.to_string().contains("symbolic link"));
    }

    #[test]
    fn special_files_are_refused() {
        let mut zip = with_basics(&[("fifo", b"")]);
        // External attributes (offset 38): unix mode in the upper 16 bits, a FIFO here;
        // "version made by" (offset 5) = 3, unix.
        patch_central(&mut zip, "fifo", |h| {
            h[5] = 3;
            h[38..42].copy_from_slice(&((0o010_644u32) << 16).to_le_bytes());
        });
        assert_eq!(open_err(&zip), BundleError::SpecialFile("fifo".into()));
    }

    #[test]
    fn overlapping_entries_are_refused() {
        // A second central-directory entry pointing at the first one's local header and data:
        // the building block of overlapping-entry bombs.
        let zip = zip_with(|z| {
            z.start_file("data.bin", deflated()).unwrap();
            z.write_all(&[7u8; 4096]).unwrap();
            z.shallow_copy_file("data.bin", "copy.bin").unwrap();
        });
        match open_err(&zip) {
            BundleError::Overlap { first, second } => {
                let mut pair = [first, second];
                pair.sort();
                assert_eq!(pair, ["copy.bin", "data.bin"]);
            }
            other => panic!("expected Overlap, got {other:?}"),
        }
    }

    #[test]
    fn overlap_by_patched_offset_is_refused() {
        let mut zip = with_basics(&[("aaaa", b"first"), ("bbbb", b"second")]);
        let mut offset = [0u8; 4];
        patch_central(&mut zip, "aaaa", |h| offset.copy_from_slice(&h[42..46]));
        patch_central(&mut zip, "bbbb", |h| h[42..46].copy_from_slice(&offset));
        assert!(matches!(open_err(&zip), BundleError::Overlap { .. }));
    }

    /// 16 MiB of zeros deflate to about 16 KiB: ~1000:1.
    fn zeros_zip(name: &str) -> Vec<u8> {
        zip_with(|z| {
            z.start_file(name, deflated()).unwrap();
            let chunk = vec![0u8; MIB as usize];
            for _ in 0..16 {
                z.write_all(&chunk).unwrap();
            }
        })
    }

    #[test]
    fn high_ratio_bomb_is_refused_without_inflating() {
        let zip = zeros_zip("zeros.bin");
        assert!(zip.len() < 100 * KIB as usize, "{}", zip.len());
        match open_err(&zip) {
            BundleError::Ratio { name, ratio, max } => {
                assert_eq!(name, "zeros.bin");
                assert!(ratio > 200, "{ratio}");
                assert_eq!(max, 200);
            }
            other => panic!("expected Ratio, got {other:?}"),
        }
        // Under an image the same check applies.
        assert!(matches!(
            open_err(&zeros_zip("docker/zeros.tar")),
            BundleError::Ratio { .. }
        ));
    }

    /// Claims 1 MiB (a ratio under 200:1, allowed) while holding 16 MiB.
    fn lying_zip(name: &str) -> Vec<u8> {
        let mut zip = zeros_zip(name);
        patch_central(&mut zip, name, |h| {
            h[24..28].copy_from_slice(&(MIB as u32).to_le_bytes())
        });
        zip
    }

    #[test]
    fn a_lying_size_is_caught_while_reading() {
        match open_err(&lying_zip("zeros.bin")) {
            BundleError::Corrupt { name, .. } => assert_eq!(name, "zeros.bin"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // Image tarballs are checked as they stream.
        let mut bundle = open(&lying_zip("docker/zeros.tar")).unwrap();
        let mut sink = Vec::new();
        let err = bundle
            .entry_reader("docker/zeros.tar")
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert!(sink.len() as u64 <= MIB + 1, "{}", sink.len());
        assert!(matches!(
            BundleError::from(err),
            BundleError::Corrupt { name, .. } if name == "docker/zeros.tar"
        ));
    }

    #[test]
    fn bounded_reads_stop_one_byte_past_the_declared_size() {
        let mut reader = Bounded::new(io::repeat(0), "endless".into(), 1000);
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).unwrap_err();
        assert!(out.len() <= 1001, "{}", out.len());
        let err = BundleError::from(err);
        assert!(matches!(&err, BundleError::Corrupt { name, .. } if name == "endless"));
        assert!(
            err.to_string().contains("more than the 1000 bytes"),
            "{err}"
        );

        let mut short = Bounded::new(&b"abc"[..], "short".into(), 10);
        let err = BundleError::from(short.read_to_end(&mut Vec::new()).unwrap_err());
        assert!(err.to_string().contains("ends after 3 bytes"), "{err}");
    }

    #[test]
    fn damaged_data_is_refused() {
        let mut zip = zip_with(|z| {
            z.start_file(
                "data.txt",
                SimpleFileOptions::default().compression_method(CompressionMethod::Stored),
            )
            .unwrap();
            z.write_all(b"precious payload").unwrap();
        });
        let at = zip.windows(8).position(|w| w == b"precious").unwrap();
        zip[at] = b'P';
        match open_err(&zip) {
            BundleError::Corrupt { name, .. } => assert_eq!(name, "data.txt"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn size_limits() {
        let limits = BundleLimits {
            max_entry_bytes: 100,
            max_total_bytes: 150,
            ..BundleLimits::default()
        };
        let big = [b'x'; 101];
        match open_with(&with_basics(&[("big", &big)]), &limits).unwrap_err() {
            BundleError::EntryTooLarge { name, size, max } => {
                assert_eq!((name.as_str(), size, max), ("big", 101, 100))
            }
            other => panic!("expected EntryTooLarge, got {other:?}"),
        }
        let part = [b'x'; 60];
        let e = open_with(&with_basics(&[("a", &part), ("b", &part)]), &limits).unwrap_err();
        assert!(
            matches!(e, BundleError::TotalTooLarge { max: 150, .. }),
            "{e:?}"
        );

        let zip = with_basics(&[]);
        let limits = BundleLimits {
            max_zip_bytes: 100,
            ..BundleLimits::default()
        };
        let e = open_with(&zip, &limits).unwrap_err();
        assert_eq!(
            e,
            BundleError::TooLarge {
                size: zip.len() as u64,
                max: 100
            }
        );
        assert!(e.to_string().contains("at most 100 bytes"), "{e}");
    }

    #[test]
    fn text_files_are_capped() {
        let limits = BundleLimits {
            max_text_bytes: 10,
            ..BundleLimits::default()
        };
        let e = open_with(&with_basics(&[]), &limits).unwrap_err();
        assert!(
            matches!(&e, BundleError::TextTooLarge { name, max: 10, .. } if name == "config.yml"),
            "{e:?}"
        );
    }

    #[test]
    fn too_many_entries() {
        let limits = BundleLimits {
            max_entries: 3,
            ..BundleLimits::default()
        };
        let zip = with_basics(&[("a", b""), ("b", b"")]);
        assert_eq!(
            open_with(&zip, &limits).unwrap_err(),
            BundleError::TooManyEntries { count: 4, max: 3 }
        );
        assert!(open_with(&with_basics(&[("a", b"")]), &limits).is_ok());
    }

    #[test]
    fn entry_count_is_checked_before_parsing() {
        // Swap the end record for a ZIP64 one that claims a billion entries: the crate would
        // try to hold them all; the check must come first.
        let mut zip = with_basics(&[]);
        let eocd_at = zip.len() - 22;
        let eocd = zip.split_off(eocd_at);
        let (cd_size, cd_offset) = (&eocd[12..16], &eocd[16..20]);
        let zip64_at = zip.len() as u64;
        let mut record = b"PK\x06\x06".to_vec();
        record.extend_from_slice(&44u64.to_le_bytes());
        record.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        record.extend_from_slice(&1_000_000_000u64.to_le_bytes());
        record.extend_from_slice(&1_000_000_000u64.to_le_bytes());
        record.extend_from_slice(
            &u64::from(u32::from_le_bytes(cd_size.try_into().unwrap())).to_le_bytes(),
        );
        record.extend_from_slice(
            &u64::from(u32::from_le_bytes(cd_offset.try_into().unwrap())).to_le_bytes(),
        );
        let mut locator = b"PK\x06\x07\0\0\0\0".to_vec();
        locator.extend_from_slice(&zip64_at.to_le_bytes());
        locator.extend_from_slice(&1u32.to_le_bytes());
        let mut end = eocd.clone();
        end[8..12].copy_from_slice(&[0xff; 4]);
        end[12..20].copy_from_slice(&[0xff; 8]);
        zip.extend([record, locator, end].concat());
        assert_eq!(
            open_err(&zip),
            BundleError::TooManyEntries {
                count: 1_000_000_000,
                max: 10_000
            }
        );
    }

    #[test]
    fn truncated_zip_is_refused() {
        let zip = with_basics(&[("data", &[1u8; 1000])]);
        let e = open_err(&zip[..zip.len() / 2]);
        assert!(matches!(e, BundleError::NotZip(_)), "{e:?}");
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(matches!(
            open_err(b"not a zip at all"),
            BundleError::NotZip(_)
        ));
        assert!(matches!(open_err(b""), BundleError::NotZip(_)));
    }

    #[test]
    fn config_must_be_there_and_valid() {
        let zip = build_zip(&[("compose.yaml", COMPOSE)]);
        assert_eq!(
            open_err(&zip),
            BundleError::MissingConfig {
                hint: String::new()
            }
        );
        // The folder was zipped instead of its contents: say so.
        let zip = build_zip(&[("web/config.yml", CONFIG), ("web/compose.yaml", COMPOSE)]);
        let e = open_err(&zip);
        assert!(e.to_string().contains("found web/config.yml"), "{e}");

        let zip = build_zip(&[("config.yml", b"Name: [web\n"), ("compose.yaml", COMPOSE)]);
        assert!(matches!(open_err(&zip), BundleError::BadConfig(_)));
        let zip = build_zip(&[("config.yml", b"- a\n- b\n"), ("compose.yaml", COMPOSE)]);
        assert!(matches!(open_err(&zip), BundleError::BadConfig(_)));
        let zip = build_zip(&[("config.yml", b"\xff\xfe"), ("compose.yaml", COMPOSE)]);
        assert_eq!(open_err(&zip), BundleError::NotText("config.yml".into()));

        let zip = build_zip(&[("config.yml", b"Version: 1\n"), ("compose.yaml", COMPOSE)]);
        let e = open_err(&zip);
        assert_eq!(e, BundleError::ConfigMissing("Name"));
        assert_eq!(
            e.to_string(),
            "config.yml has no Name; the app id is built from Name and Version"
        );
        let zip = build_zip(&[("config.yml", b"Name: web\n"), ("compose.yaml", COMPOSE)]);
        assert_eq!(open_err(&zip), BundleError::ConfigMissing("Version"));
        let zip = build_zip(&[
            ("config.yml", b"Name: ''\nVersion: 1"),
            ("compose.yaml", COMPOSE),
        ]);
        assert_eq!(open_err(&zip), BundleError::ConfigMissing("Name"));

        // The id must give a compose project name.
        let zip = build_zip(&[
            ("config.yml", "Name: Ü\nVersion: .".as_bytes()),
            ("compose.yaml", COMPOSE),
        ]);
        assert!(matches!(open_err(&zip), BundleError::BadConfig(_)));
    }

    #[test]
    fn compose_must_be_there() {
        let zip = build_zip(&[("config.yml", CONFIG), ("docker-compose.yml.bak", b"")]);
        assert_eq!(open_err(&zip), BundleError::MissingCompose);
    }

    #[test]
    fn duplicate_names_are_refused() {
        // ZipWriter refuses duplicates, so rename one entry in the central directory.
        let mut zip = with_basics(&[("aaaa", b"first"), ("bbbb", b"second")]);
        patch_central(&mut zip, "bbbb", |h| h[46..50].copy_from_slice(b"aaaa"));
        let e = open_err(&zip);
        assert_eq!(e, BundleError::Duplicate("aaaa".into()));
        assert_eq!(
            e.to_string(),
            "entry aaaa appears more than once in the bundle"
        );
        // Names that differ only in spelling are the same file once extracted.
        let zip = with_basics(&[("x/y", b"1"), ("x//y", b"2")]);
        assert_eq!(open_err(&zip), BundleError::Duplicate("x/y".into()));
        // A file cannot be a directory too.
        let zip = with_basics(&[("x", b"1"), ("x/y", b"2")]);
        assert!(matches!(open_err(&zip), BundleError::FileAsDir { parent, .. } if parent == "x"));
    }

    #[test]
    fn encrypted_entries_are_refused() {
        let mut zip = with_basics(&[("secret", b"data")]);
        // General-purpose flag bit 0 (offset 8): encrypted.
        patch_central(&mut zip, "secret", |h| h[8] |= 1);
        let e = open_err(&zip);
        assert_eq!(e, BundleError::Encrypted("secret".into()));
        assert!(e.to_string().contains("password"));
    }

    #[test]
    fn unsupported_compression_is_refused() {
        let mut zip = with_basics(&[("packed", b"data")]);
        // Compression method (offset 10): 12 = bzip2, not built in.
        patch_central(&mut zip, "packed", |h| {
            h[10..12].copy_from_slice(&12u16.to_le_bytes())
        });
        assert!(
            matches!(open_err(&zip), BundleError::Unsupported { name, .. } if name == "packed")
        );
    }

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(ByteSize(300).to_string(), "300 bytes");
        assert_eq!(ByteSize(MIB).to_string(), "1 MiB");
        assert_eq!(ByteSize(3 * GIB / 2).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(8 * GIB).to_string(), "8 GiB");
    }

    #[test]
    fn errors_have_kinds_and_stay_the_source() {
        let e = crate::core::CoreError::from(BundleError::MissingCompose);
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(matches!(
            e,
            crate::core::CoreError::Bundle(BundleError::MissingCompose)
        ));
        assert_eq!(BundleError::Io("disk".into()).kind(), ErrorKind::Failed);
    }
}
