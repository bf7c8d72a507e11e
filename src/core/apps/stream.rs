//! Importing while the upload still arrives: the route pushes the upload's bytes into a
//! pipe ([`upload_pipe`]); a follower walks the ZIP's local headers in order ([`follow`]),
//! writes the bytes into the upload file, and hands each image tarball it meets to the
//! import, which streams it into Docker's load endpoint at once (its data is not written:
//! a hole in a sparse file). Nothing here is trusted yet: the complete checks of
//! [`super::bundle::Bundle::open`] run when the upload has ended, every streamed entry must
//! then match the central directory (offset, sizes, method, CRC), and any failure rolls back
//! every image loaded so far. [`TarWatch`] finds `manifest.json` inside a tarball while it
//! streams, so the import journal names the images before Docker can create them.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::bundle::{check_name, is_image_path, Bounded, BundleError, BundleLimits, ByteSize};

/// The sending end of an upload: the receiving route pushes the bytes of the ZIP as they
/// arrive and says how the upload ended. Dropped without [`UploadSender::finish`], the
/// upload counts as broken off.
pub struct UploadSender {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    end: Arc<Mutex<Option<Result<(), String>>>>,
}

/// The import's end of an upload: reads the ZIP's bytes as they arrive and writes them into
/// the upload file, except where told not to (the data of image tarballs streamed straight
/// to Docker: those ranges stay holes in a sparse file, which no later step reads).
pub struct UploadReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    end: Arc<Mutex<Option<Result<(), String>>>>,
    current: Bytes,
    ended: Option<Result<(), String>>,
    file: File,
    pos: u64,
    write: bool,
}

/// A pipe for one upload into `file` (an empty upload file). Holds at most a few chunks.
pub fn upload_pipe(file: File) -> (UploadSender, UploadReader) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let end = Arc::new(Mutex::new(None));
    (
        UploadSender {
            tx,
            end: end.clone(),
        },
        UploadReader {
            rx,
            end,
            current: Bytes::new(),
            ended: None,
            file,
            pos: 0,
            write: true,
        },
    )
}

impl UploadSender {
    /// Hands on the next bytes; false when the import no longer reads them.
    pub async fn send(&self, bytes: Bytes) -> bool {
        self.tx.send(bytes).await.is_ok()
    }

    /// The upload ended: completely (Ok) or not (the reason).
    pub fn finish(self, end: Result<(), String>) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
    }
}

impl UploadReader {
    /// True when bytes are at hand; false at the end of a complete upload.
    fn fill(&mut self) -> io::Result<bool> {
        while self.current.is_empty() {
            match &self.ended {
                Some(Ok(())) => return Ok(false),
                Some(Err(e)) => return Err(io::Error::other(format!("the upload failed: {e}"))),
                None => {}
            }
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => {
                    let end = self.end.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    self.ended =
                        Some(end.unwrap_or_else(|| {
                            Err("the request ended before the upload did".into())
                        }));
                }
            }
        }
        Ok(true)
    }

    /// Up to `max` of the next bytes (without copying), or None at the end.
    fn next_bytes(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        if !self.fill()? {
            return Ok(None);
        }
        let n = max.min(self.current.len());
        let b = self.current.split_to(n);
        if self.write {
            self.file.write_all_at(&b, self.pos)?;
        }
        self.pos += n as u64;
        Ok(Some(b))
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Skips `n` bytes (they must arrive, and are written).
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            match self.next_bytes(n.min(usize::MAX as u64) as usize)? {
                Some(b) => n -= b.len() as u64,
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        Ok(())
    }

    /// Reads (and writes) the rest of the upload; how the upload ended. The file then has
    /// the upload's length.
    pub fn drain(&mut self) -> Result<(), String> {
        self.write = true;
        loop {
            match self.next_bytes(usize::MAX) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        self.file
            .set_len(self.pos)
            .map_err(|e| format!("cannot store the upload: {e}"))
    }
}

impl Read for UploadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.next_bytes(buf.len())? {
            Some(b) => {
                buf[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            None => Ok(0),
        }
    }
}

/// Where an entry the follower streamed sits, as its local header says; checked against the
/// central directory once the upload is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    pub name: String,
    pub header_start: u64,
    pub compressed: u64,
    pub size: u64,
    pub method: u16,
    /// As declared by the local header and verified over the data that was streamed.
    pub crc: u32,
}

/// An image tarball the follower found: its bytes arrive on `body` (ending early with an
/// error when the entry turns out damaged).
pub struct FoundImage {
    pub entry: LocalEntry,
    pub body: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
}

/// Why the walk ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WalkEnd {
    /// The central directory (or the end of the data) was reached.
    Complete,
    /// The walk cannot go on (an entry with a data descriptor, something unexpected): the
    /// remaining images load from the complete file after the checks.
    Stopped(String),
    /// The import stopped taking images (a load failed, or a cancel).
    Abandoned,
    /// A streamed entry is damaged (or its bytes could not be read).
    Damaged(BundleError),
}

const CHUNK: usize = 256 * 1024;
const LOCAL_HEADER: u32 = 0x0403_4b50;
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DATA_DESCRIPTOR: u16 = 8;
const STORED: u16 = 0;
const DEFLATED: u16 = 8;

/// Called with the image ids a tarball's `manifest.json` names, before the bytes that
/// complete it go to Docker (so before Docker can have created the images).
pub type ManifestHook<'a> = &'a (dyn Fn(&[String]) + Send + Sync);

/// Called with the bytes of a top-level `config.yml` met before the walk ends; false stops
/// streaming images (e.g. the app exists already and no replace was asked for: the checks
/// will refuse the import anyway, so loading its images would be wasted work).
pub type ConfigHook<'a> = &'a (dyn Fn(&[u8]) -> bool + Send + Sync);

/// A config.yml larger than this is not looked at during the walk (the checks read it later).
const CONFIG_PEEK_BYTES: u64 = 64 * 1024;

/// Walks the local headers of the growing ZIP in order. Image tarballs under `docker/` with
/// sizes in their local header, stored or deflated, within the limits, are sent to `found`
/// and streamed; every other entry is skipped. Returns the streamed entries (CRCs verified)
/// and why the walk ended. Blocking: run it in `spawn_blocking`.
pub fn follow(
    reader: &mut UploadReader,
    limits: &BundleLimits,
    found: &tokio::sync::mpsc::Sender<FoundImage>,
    manifest: ManifestHook<'_>,
    config: ConfigHook<'_>,
) -> (Vec<LocalEntry>, WalkEnd) {
    let mut walk = Walk {
        streamed: Vec::new(),
        total: 0,
        names: HashSet::new(),
    };
    for _ in 0..=limits.max_entries {
        if let Err(end) = walk.step(reader, limits, found, manifest, config) {
            return (walk.streamed, end);
        }
    }
    (walk.streamed, WalkEnd::Stopped("too many entries".into()))
}

/// What the walk has streamed so far.
struct Walk {
    streamed: Vec<LocalEntry>,
    total: u64,
    names: HashSet<String>,
}

/// A local header as read from the stream (sizes from its ZIP64 extra field when set).
struct LocalHeader {
    start: u64,
    raw_name: Vec<u8>,
    flags: u16,
    method: u16,
    crc: u32,
    compressed: u64,
    size: u64,
}

impl LocalHeader {
    fn readable(&self, compressed_cap: u64, size_cap: u64) -> bool {
        self.flags & FLAG_ENCRYPTED == 0
            && matches!(self.method, STORED | DEFLATED)
            && self.compressed <= compressed_cap
            && self.size <= size_cap
    }
}

fn stopped(e: impl ToString) -> WalkEnd {
    WalkEnd::Stopped(e.to_string())
}

impl Walk {
    /// Reads one entry: the config peeked at, an image streamed, anything else skipped.
    /// `Err` ends the walk.
    fn step(
        &mut self,
        reader: &mut UploadReader,
        limits: &BundleLimits,
        found: &tokio::sync::mpsc::Sender<FoundImage>,
        manifest: ManifestHook<'_>,
        config: ConfigHook<'_>,
    ) -> Result<(), WalkEnd> {
        let header = read_local_header(reader)?;
        let name = String::from_utf8_lossy(&header.raw_name).into_owned();
        if name == super::bundle::CONFIG_FILE
            && header.readable(CONFIG_PEEK_BYTES, CONFIG_PEEK_BYTES)
        {
            return peek_config(reader, &header, config);
        }
        let Some(name) = self.streamable(&name, &header, limits) else {
            return reader.skip(header.compressed).map_err(stopped);
        };
        self.total = self.total.saturating_add(header.size);
        let entry = LocalEntry {
            name,
            header_start: header.start,
            compressed: header.compressed,
            size: header.size,
            method: header.method,
            crc: header.crc,
        };
        stream_found(reader, &entry, found, manifest)?;
        self.streamed.push(entry);
        Ok(())
    }

    /// The entry's checked name when it is an image tarball that can be streamed within the
    /// limits (and was not met before).
    fn streamable(
        &mut self,
        name: &str,
        header: &LocalHeader,
        limits: &BundleLimits,
    ) -> Option<String> {
        let image = match check_name(name) {
            Ok(n) if is_image_path(&n) && !header.raw_name.ends_with(b"/") => n,
            _ => return None,
        };
        let (size, compressed) = (header.size, header.compressed);
        let fits = header.readable(u64::MAX, limits.max_entry_bytes)
            && self.total.saturating_add(size) <= limits.max_total_bytes
            && !(size > limits.ratio_min_bytes
                && size > compressed.saturating_mul(limits.max_ratio))
            && (header.method == DEFLATED || size == compressed);
        (fits && self.names.insert(image.clone())).then_some(image)
    }
}

/// Reads the next local header; `Err` when there is none (the central directory, the end of
/// the data) or the walk cannot go on from it.
fn read_local_header(reader: &mut UploadReader) -> Result<LocalHeader, WalkEnd> {
    let start = reader.position();
    let mut fixed = [0u8; 30];
    match read_full(reader, &mut fixed) {
        Ok(true) => {}
        Ok(false) => return Err(WalkEnd::Complete),
        Err(e) => return Err(stopped(e)),
    }
    let le16 = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]);
    let le32 = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4"));
    if le32(0) != LOCAL_HEADER {
        // The central directory, or something else: either way no more local entries.
        return Err(WalkEnd::Complete);
    }
    let mut var = vec![0u8; usize::from(le16(26)) + usize::from(le16(28))];
    reader.read_exact(&mut var).map_err(stopped)?;
    let extra = var.split_off(usize::from(le16(26)));
    let (mut size, mut compressed) = (u64::from(le32(22)), u64::from(le32(18)));
    if compressed == u64::from(u32::MAX) || size == u64::from(u32::MAX) {
        (size, compressed) = zip64_sizes(&extra, size, compressed)
            .ok_or_else(|| stopped("a ZIP64 entry without its sizes"))?;
    }
    let flags = le16(6);
    if flags & FLAG_DATA_DESCRIPTOR != 0 {
        // Sizes follow the data: the end of a stored entry cannot be found in a stream.
        return Err(stopped("an entry has its sizes after its data"));
    }
    Ok(LocalHeader {
        start,
        raw_name: var,
        flags,
        method: le16(8),
        crc: le32(14),
        compressed,
        size,
    })
}

/// Reads a small top-level `config.yml` and asks the hook whether to go on.
fn peek_config(
    reader: &mut UploadReader,
    header: &LocalHeader,
    config: ConfigHook<'_>,
) -> Result<(), WalkEnd> {
    let mut data = vec![0u8; header.compressed as usize];
    reader.read_exact(&mut data).map_err(stopped)?;
    let text = if header.method == DEFLATED {
        let mut out = Vec::new();
        let inflated = flate2::read::DeflateDecoder::new(&data[..])
            .take(CONFIG_PEEK_BYTES)
            .read_to_end(&mut out);
        inflated.ok().map(|_| out)
    } else {
        Some(data)
    };
    match text {
        Some(text) if !config(&text) => {
            Err(stopped("config.yml names an app that is already there"))
        }
        _ => Ok(()),
    }
}

/// Hands an image entry to the import and streams its bytes, then skips whatever of the
/// entry's data the decoder left (deflate ends by itself).
fn stream_found(
    reader: &mut UploadReader,
    entry: &LocalEntry,
    found: &tokio::sync::mpsc::Sender<FoundImage>,
    manifest: ManifestHook<'_>,
) -> Result<(), WalkEnd> {
    let (tx, body) = tokio::sync::mpsc::channel(4);
    let image = FoundImage {
        entry: entry.clone(),
        body,
    };
    if found.blocking_send(image).is_err() {
        return Err(WalkEnd::Abandoned);
    }
    let start = reader.position();
    match stream_entry(reader, entry, &tx, manifest) {
        Ok(true) => {}
        Ok(false) => return Err(WalkEnd::Abandoned),
        Err(e) => {
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            return Err(WalkEnd::Damaged(e));
        }
    }
    let used = reader.position() - start;
    if used > entry.compressed {
        return Err(stopped(format!("{}: read past its data", entry.name)));
    }
    reader.skip(entry.compressed - used).map_err(stopped)
}

/// Streams one entry's uncompressed bytes to `tx`; false when the receiver went away. The
/// entry's data is not written to the upload file (it stays a hole).
fn stream_entry(
    reader: &mut UploadReader,
    entry: &LocalEntry,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    manifest: ManifestHook<'_>,
) -> Result<bool, BundleError> {
    reader.write = false;
    let r = stream_data(reader, entry, tx, manifest);
    reader.write = true;
    r
}

fn stream_data(
    reader: &mut UploadReader,
    entry: &LocalEntry,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    manifest: ManifestHook<'_>,
) -> Result<bool, BundleError> {
    let mut crc = crc32fast::Hasher::new();
    let mut watch = TarWatch::for_name(&entry.name);
    let mut pass = |bytes: Bytes| -> bool {
        crc.update(&bytes);
        if let Some(ids) = watch.as_mut().and_then(|w| w.feed(&bytes)) {
            manifest(&ids);
        }
        tx.blocking_send(Ok(bytes)).is_ok()
    };
    if entry.method == STORED {
        // Passed on as received: no copy.
        let mut left = entry.size;
        while left > 0 {
            let chunk = reader
                .next_bytes(left.min(CHUNK as u64) as usize)
                .map_err(BundleError::from)?
                .ok_or_else(|| BundleError::Corrupt {
                    name: entry.name.clone(),
                    detail: format!(
                        "it ends after {} of the {} its header declares",
                        ByteSize(entry.size - left),
                        ByteSize(entry.size)
                    ),
                })?;
            left -= chunk.len() as u64;
            if !pass(chunk) {
                return Ok(false);
            }
        }
    } else {
        let data = (&mut *reader).take(entry.compressed);
        let inflate = flate2::read::DeflateDecoder::new_with_buf(data, vec![0u8; 64 * 1024]);
        let mut src = Bounded::new(inflate, entry.name.clone(), entry.size);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match src.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            if !pass(Bytes::copy_from_slice(&buf[..filled])) {
                return Ok(false);
            }
        }
    }
    let crc = crc.finalize();
    if crc != entry.crc {
        return Err(BundleError::Corrupt {
            name: entry.name.clone(),
            detail: format!("its CRC-32 is {crc:08x}, its header says {:08x}", entry.crc),
        });
    }
    Ok(true)
}

/// Reads exactly `buf.len()` bytes; false when the data ended before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

/// The (size, compressed) of a ZIP64 extra field, for the values the header set to all ones.
fn zip64_sizes(extra: &[u8], size: u64, compressed: u64) -> Option<(u64, u64)> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = u16::from_le_bytes([extra[at], extra[at + 1]]);
        let len = usize::from(u16::from_le_bytes([extra[at + 2], extra[at + 3]]));
        let body = extra.get(at + 4..at + 4 + len)?;
        if id == 0x0001 {
            let mut fields = body
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8")));
            let size = if size == u64::from(u32::MAX) {
                fields.next()?
            } else {
                size
            };
            let compressed = if compressed == u64::from(u32::MAX) {
                fields.next()?
            } else {
                compressed
            };
            return Some((size, compressed));
        }
        at += 4 + len;
    }
    None
}

/// Watches a tarball's bytes go by for `manifest.json` (what `docker save` writes: the
/// images' config files, whose digests are the image ids) and returns the ids it names.
/// Compressed tarballs are watched through a gzip decoder.
pub struct TarWatch {
    inner: Box<dyn TarSink>,
}

trait TarSink: Send {
    fn feed(&mut self, data: &[u8]);
    fn take(&mut self) -> Option<Vec<String>>;
}

impl TarWatch {
    /// A watcher for an image file by its name (`.tar`, `.tgz`, `.tar.gz`).
    pub fn for_name(name: &str) -> Option<TarWatch> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar") {
            Some(TarWatch {
                inner: Box::new(TarScan::default()),
            })
        } else if lower.ends_with(".tgz") || lower.ends_with(".tar.gz") {
            Some(TarWatch {
                inner: Box::new(Gunzip {
                    decoder: Some(flate2::write::GzDecoder::new(TarScan::default())),
                    found: None,
                }),
            })
        } else {
            None
        }
    }

    /// Feeds the next bytes; the image ids once `manifest.json` is complete (once).
    pub fn feed(&mut self, data: &[u8]) -> Option<Vec<String>> {
        self.inner.feed(data);
        self.inner.take()
    }
}

struct Gunzip {
    decoder: Option<flate2::write::GzDecoder<TarScan>>,
    found: Option<Vec<String>>,
}

impl TarSink for Gunzip {
    fn feed(&mut self, data: &[u8]) {
        use std::io::Write;
        if let Some(d) = self.decoder.as_mut() {
            // Damage is Docker's to report; the watch just stops.
            let failed = d.write_all(data).and_then(|_| d.flush()).is_err();
            self.found = d.get_mut().take();
            if failed || d.get_ref().done {
                self.decoder = None;
            }
        }
    }
    fn take(&mut self) -> Option<Vec<String>> {
        self.found.take()
    }
}

/// The largest `manifest.json` kept.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Default)]
struct TarScan {
    header: Vec<u8>,
    /// Bytes of the current member (data and padding) still to come.
    skip: u64,
    /// The manifest being collected, and how many of its bytes are still to come.
    capture: Option<(Vec<u8>, u64)>,
    found: Option<Vec<String>>,
    done: bool,
}

impl std::io::Write for TarScan {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        TarSink::feed(self, data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarSink for TarScan {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                if let Some((bytes, left)) = self.capture.as_mut() {
                    let m = (*left).min(n as u64) as usize;
                    bytes.extend_from_slice(&data[..m]);
                    *left -= m as u64;
                    if *left == 0 {
                        let (bytes, _) = self.capture.take().expect("capturing");
                        self.found = Some(manifest_ids(&bytes));
                        self.done = true;
                    }
                }
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() < 512 {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if header.iter().all(|&b| b == 0) {
                continue; // end-of-archive blocks
            }
            let Some(size) = tar_size(&header[124..136]) else {
                self.done = true;
                continue;
            };
            self.skip = size.div_ceil(512) * 512;
            let name = tar_name(&header);
            let regular = matches!(header[156], 0 | b'0');
            if regular && matches!(name.as_str(), "manifest.json" | "./manifest.json") {
                if size == 0 || size > MAX_MANIFEST {
                    self.done = true;
                } else {
                    self.capture = Some((Vec::with_capacity(size as usize), size));
                }
            }
        }
    }
    fn take(&mut self) -> Option<Vec<String>> {
        self.found.take()
    }
}

fn tar_name(header: &[u8]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&header[0..100]);
    let prefix = if &header[257..262] == b"ustar" {
        field(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// A tar size field: octal text, or base-256 when the high bit is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// The image ids of a `docker save` manifest: `[{"Config": "<hex>.json" or
/// "blobs/sha256/<hex>", ...}]` -> `sha256:<hex>`.
/// The image ids (`sha256:...`) and references (`RepoTags`) a `manifest.json` names.
fn manifest_ids(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
    }
    let Ok(items) = serde_json::from_slice::<Vec<Item>>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in items {
        let base = i
            .config
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".json");
        if base.len() == 64 && base.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(format!("sha256:{}", base.to_ascii_lowercase()));
        }
        out.extend(i.repo_tags.unwrap_or_default());
    }
    out
}

/// A `Write` that hands 64 KiB chunks to an async consumer through a bounded channel; used
/// on a blocking thread, so a writer (ZIP, tar) never holds more than a few chunks.
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

const WRITE_CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(WRITE_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The bytes `produce` writes on a blocking thread, as a stream. `produce` must flush at
/// its end. A failure (`what` names the producer in the log) ends the stream with its
/// error, so the reader sees a broken transfer rather than a short, valid-looking one.
pub fn write_stream(
    what: &'static str,
    produce: impl FnOnce(ChannelWriter) -> io::Result<()> + Send + 'static,
) -> crate::core::engine::ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(WRITE_CHUNK),
        };
        if let Err(e) = produce(out) {
            tracing::warn!(error = %e, "{what} aborted");
            let _ = err_tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            let size = format!("{:011o}", data.len());
            h[124..135].copy_from_slice(size.as_bytes());
            h[156] = b'0';
            h[257..262].copy_from_slice(b"ustar");
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tar_watch_finds_the_manifest_in_any_chunking() {
        let manifest = format!(
            r#"[{{"Config":"{HEX}.json","RepoTags":["a:1"]}},{{"Config":"blobs/sha256/{}","RepoTags":null}}]"#,
            HEX.replace('0', "f")
        );
        let tar = tar_of(&[
            ("abc/layer.tar", &[7u8; 1500]),
            ("manifest.json", manifest.as_bytes()),
            ("repositories", b"{}"),
        ]);
        for chunk in [1, 7, 511, 512, 513, 4096, tar.len()] {
            let mut w = TarWatch::for_name("docker/x.tar").unwrap();
            let mut got = None;
            for c in tar.chunks(chunk) {
                if let Some(ids) = w.feed(c) {
                    assert!(got.is_none(), "reported twice");
                    got = Some(ids);
                }
            }
            assert_eq!(
                got.unwrap(),
                vec![
                    format!("sha256:{HEX}"),
                    "a:1".to_string(),
                    format!("sha256:{}", HEX.replace('0', "f"))
                ],
                "chunk {chunk}"
            );
        }
        // Through gzip as well.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let mut w = TarWatch::for_name("docker/x.tar.gz").unwrap();
        let got: Vec<_> = gz.chunks(100).filter_map(|c| w.feed(c)).collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0][0], format!("sha256:{HEX}"));
        // Not a tarball: nothing, no panic.
        let mut w = TarWatch::for_name("docker/x.tar").unwrap();
        assert!(w.feed(&[0xffu8; 3000]).is_none());
    }

    /// Sends `bytes` through a pipe in small pieces; the walk's result, the streamed
    /// images with their bytes, and the upload file as written.
    type Streamed = Vec<(LocalEntry, Vec<u8>)>;

    fn walk(zip: &[u8]) -> (Streamed, WalkEnd, Vec<u8>) {
        walk_with(zip, &|_| true)
    }

    fn walk_with(zip: &[u8], config: ConfigHook<'_>) -> (Streamed, WalkEnd, Vec<u8>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let (sender, mut r) = upload_pipe(file.reopen().unwrap());
        let bytes = zip.to_vec();
        let feeder = std::thread::spawn(move || {
            for c in bytes.chunks(1000) {
                if sender.tx.blocking_send(Bytes::copy_from_slice(c)).is_err() {
                    break;
                }
            }
            sender.finish(Ok(()));
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<FoundImage>(1);
        let collector = std::thread::spawn(move || {
            let mut out: Streamed = Vec::new();
            while let Some(mut img) = rx.blocking_recv() {
                let mut data = Vec::new();
                while let Some(chunk) = img.body.blocking_recv() {
                    match chunk {
                        Ok(c) => data.extend_from_slice(&c),
                        Err(_) => data.extend_from_slice(b"<error>"),
                    }
                }
                out.push((img.entry, data));
            }
            out
        });
        let (entries, end) = follow(&mut r, &BundleLimits::default(), &tx, &|_| {}, config);
        drop(tx);
        r.drain().unwrap();
        feeder.join().unwrap();
        let got = collector.join().unwrap();
        if end == WalkEnd::Complete {
            assert_eq!(
                entries,
                got.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>()
            );
        }
        (got, end, std::fs::read(file.path()).unwrap())
    }

    #[test]
    fn a_config_the_hook_refuses_stops_streaming_images() {
        use zip::write::SimpleFileOptions;
        let big: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("docker/first.tar", stored).unwrap();
        w.write_all(&big[..5000]).unwrap();
        w.start_file("config.yml", deflated).unwrap();
        w.write_all(b"Name: a\nVersion: 1\n").unwrap();
        w.start_file("docker/a.tar", stored).unwrap();
        w.write_all(&big).unwrap();
        let zip = w.finish().unwrap().into_inner();

        let seen = Mutex::new(Vec::new());
        let refuse = |text: &[u8]| {
            seen.lock().unwrap().push(text.to_vec());
            false
        };
        let (got, end, written) = walk_with(&zip, &refuse);
        // The config was read (inflated) as the upload arrived; the image before it had
        // streamed already, the one after it did not, and the file holds all of the rest.
        assert_eq!(
            *seen.lock().unwrap(),
            vec![b"Name: a\nVersion: 1\n".to_vec()]
        );
        let names: Vec<&str> = got.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["docker/first.tar"]);
        assert!(matches!(end, WalkEnd::Stopped(_)), "{end:?}");
        assert_eq!(written.len(), zip.len());
        let tail = zip.len() - 2000;
        assert_eq!(written[tail..], zip[tail..]);

        // Accepted: every image streams.
        let (got, end, _) = walk_with(&zip, &|_| true);
        assert_eq!(end, WalkEnd::Complete);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn the_walk_streams_stored_and_deflated_images_and_skips_the_rest() {
        use zip::write::SimpleFileOptions;
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file("config.yml", deflated).unwrap();
        w.write_all(b"Name: a\nVersion: 1\n").unwrap();
        w.start_file("docker/a.tar", stored).unwrap();
        w.write_all(&big).unwrap();
        w.start_file("docker/notes.txt", stored).unwrap();
        w.write_all(b"not an image").unwrap();
        w.start_file("docker/b.tar.gz", deflated).unwrap();
        w.write_all(&big[..1000]).unwrap();
        w.start_file("../docker/c.tar", stored).unwrap();
        w.write_all(b"zip slip").unwrap();
        let zip = w.finish().unwrap().into_inner();
        let (got, end, written) = walk(&zip);
        assert_eq!(end, WalkEnd::Complete);
        // The upload file is the ZIP, except the streamed data, which is left out.
        assert_eq!(written.len(), zip.len());
        let mut expected = zip.clone();
        let names: Vec<&str> = got.iter().map(|(e, _)| e.name.as_str()).collect();
        assert_eq!(names, ["docker/a.tar", "docker/b.tar.gz"]);
        assert_eq!(got[0].1, big);
        assert_eq!(got[1].1, &big[..1000]);
        assert_eq!(got[0].0.method, STORED);
        assert_eq!(got[1].0.method, DEFLATED);
        // The offsets agree with what the central directory says.
        let mut archive = zip::ZipArchive::new(io::Cursor::new(&zip)).unwrap();
        for (e, _) in &got {
            let f = archive.by_name(&e.name).unwrap();
            assert_eq!(f.header_start(), e.header_start);
            assert_eq!(f.crc32(), e.crc);
            let start = f.data_start().unwrap() as usize;
            expected[start..start + e.compressed as usize].fill(0);
        }
        assert!(written == expected, "the upload file differs from the ZIP");
    }

    #[test]
    fn the_walk_refuses_damage_and_stops_at_data_descriptors() {
        use zip::write::SimpleFileOptions;
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        w.start_file("docker/a.tar", stored).unwrap();
        w.write_all(&[5u8; 10_000]).unwrap();
        let mut zip = w.finish().unwrap().into_inner();
        // A flipped data byte: the CRC check fails, the body ends with an error.
        let at = 30 + "docker/a.tar".len() + 100;
        zip[at] ^= 1;
        let (got, end, _) = walk(&zip);
        assert!(
            matches!(end, WalkEnd::Damaged(ref e) if e.to_string().contains("CRC")),
            "{end:?}"
        );
        assert!(got[0].1.ends_with(b"<error>"));
        // A truncated upload ends the walk without a panic.
        let (_, end, _) = walk(&zip[..zip.len() / 2]);
        assert!(matches!(end, WalkEnd::Damaged(_)), "{end:?}");
        // Sizes after the data (a streamed ZIP): the walk stops, nothing is streamed.
        let mut w = zip::ZipWriter::new_stream(Vec::new());
        w.start_file("docker/a.tar", stored).unwrap();
        w.write_all(&[5u8; 1000]).unwrap();
        let zip = w.finish().unwrap().into_inner();
        let (got, end, written) = walk(&zip);
        assert!(got.is_empty());
        assert!(
            written == zip,
            "a walk that stopped still writes everything"
        );
        assert!(matches!(end, WalkEnd::Stopped(_)), "{end:?}");
    }

    #[test]
    fn an_upload_broken_off_is_an_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let (sender, mut r) = upload_pipe(file.reopen().unwrap());
        let t = std::thread::spawn(move || {
            sender.tx.blocking_send(Bytes::from_static(b"PK")).unwrap();
            drop(sender); // no finish: the request went away
        });
        let err = r.drain().unwrap_err();
        t.join().unwrap();
        assert!(err.contains("ended before"), "{err}");
        let (sender, mut r) = upload_pipe(file.reopen().unwrap());
        sender.finish(Err("too large".into()));
        assert!(r.drain().unwrap_err().contains("too large"));
    }
}
