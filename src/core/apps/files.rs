//! The Files API's view of the store: an app's stored bundle as a file tree, and the path
//! logic that keeps every lookup inside it.
//!
//! A file id is `{appid}//{path}` (the API URL-encodes it as a whole); a bare `{appid}` is the
//! bundle's root. `{path}` is `/`-separated and relative; `..`, `.`, empty parts and absolute
//! paths are refused as invalid, never normalised, and a symlink anywhere on the way is
//! refused too (the store never makes one, so one there was not put there by gantry).
//! What is listed is what the store holds of the bundle: the image tarballs under `docker/`
//! were loaded into Docker and are not kept, and gantry's own `gantry-app.json` is hidden.
//! All functions block: async callers use `spawn_blocking`.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::store::{AppStore, RECORD_FILE};
use super::AppId;
use crate::core::safe_fs;
use crate::core::{CoreError, CoreResult};

/// Separates the app id from the path inside its bundle.
pub const SEPARATOR: &str = "//";
/// Deeper trees are not listed further (a bundle made by a ZIP tool is never this deep).
const MAX_DEPTH: usize = 32;

/// A node of a bundle's file tree. `id` is the raw `{appid}//{path}` (not yet URL-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileNode {
    Dir {
        name: String,
        id: String,
        entries: Vec<FileNode>,
    },
    File {
        name: String,
        id: String,
        mime: &'static str,
        size: u64,
    },
}

impl FileNode {
    pub fn name(&self) -> &str {
        match self {
            FileNode::Dir { name, .. } | FileNode::File { name, .. } => name,
        }
    }
}

/// What a file id refers to.
#[derive(Debug)]
pub enum FileLookup {
    /// A directory (or an app's root): its entries, recursively.
    Dir(Vec<FileNode>),
    /// A regular file, opened (without following a symlink).
    File {
        file: File,
        mime: &'static str,
        size: u64,
    },
}

/// Splits a decoded file id into the app and the relative path inside its bundle.
///
/// App names may themselves contain `//`, so each `//` is tried from the left and the first
/// split whose left side is a stored app wins; when none is, the first `//` splits (and the
/// lookup answers "no such app").
pub fn split_id(id: &str, is_app: impl Fn(&AppId) -> bool) -> (AppId, Option<&str>) {
    if is_app(&AppId::from(id)) {
        return (AppId::from(id), None);
    }
    let mut first = None;
    for (i, _) in id.match_indices(SEPARATOR) {
        let app = AppId::from(&id[..i]);
        let rest = &id[i + SEPARATOR.len()..];
        if is_app(&app) {
            return (app, Some(rest));
        }
        first.get_or_insert((app, rest));
    }
    match first {
        Some((app, rest)) => (app, Some(rest)),
        None => (AppId::from(id), None),
    }
}

/// The parts of a relative path inside a bundle; `Invalid` for anything that could leave it.
/// An empty path (and a single trailing `/`) is the root.
pub fn path_parts(path: &str) -> CoreResult<Vec<&str>> {
    let invalid = |why: &str| CoreError::Invalid(format!("invalid file path \"{path}\": {why}"));
    if path.starts_with('/') {
        return Err(invalid("it must be relative to the app's bundle"));
    }
    if path.contains('\0') {
        return Err(invalid("it contains a NUL character"));
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    for part in trimmed.split('/') {
        match part {
            "" => return Err(invalid("it has an empty part")),
            "." | ".." => return Err(invalid("\".\" and \"..\" are not allowed")),
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// The entries of the open directory `dir`, recursively, sorted by name. Symlinks and
/// special files are left out; so is gantry's record at the root.
fn list(dir: &OwnedFd, id_prefix: &str, root: bool, depth: usize) -> io::Result<Vec<FileNode>> {
    let mut nodes = Vec::new();
    for (name, kind) in safe_fs::entries(dir)? {
        let Ok(name) = name.into_string() else {
            continue; // not UTF-8: not from a ZIP the bundle check accepted
        };
        if root && name == RECORD_FILE {
            continue;
        }
        let id = if root {
            format!("{id_prefix}{SEPARATOR}{name}")
        } else {
            format!("{id_prefix}/{name}")
        };
        match kind {
            safe_fs::Kind::Dir => {
                let entries = match safe_fs::open_subdir(dir, &name) {
                    Ok(sub) if depth < MAX_DEPTH => list(&sub, &id, false, depth + 1)?,
                    // Too deep, or swapped for a symlink since it was listed.
                    _ => Vec::new(),
                };
                nodes.push(FileNode::Dir { name, id, entries });
            }
            safe_fs::Kind::File { size } => {
                let mime = mime_type(&name);
                nodes.push(FileNode::File {
                    name,
                    id,
                    mime,
                    size,
                });
            }
            safe_fs::Kind::Other => {}
        }
    }
    nodes.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(nodes)
}

/// Looks up `{appid}` or `{appid}//{path}` (decoded) in the store. No symlink is followed
/// on the way (each part is opened below the one before with `O_NOFOLLOW`).
pub fn lookup(store: &AppStore, id: &str) -> CoreResult<FileLookup> {
    if id.is_empty() {
        return Err(CoreError::Invalid("file id not given".into()));
    }
    let (app, path) = split_id(id, |a| store.contains(a));
    let parts = path_parts(path.unwrap_or(""))?;
    let stored = store.get(&app)?;
    if parts.first() == Some(&RECORD_FILE) {
        return Err(CoreError::NotFound(format!("no such file: {id}")));
    }
    let rel: PathBuf = parts.iter().collect();
    let failed = |e: safe_fs::SafeFsError| match e {
        e if e.is_not_found() => CoreError::NotFound(format!("no such file: {id}")),
        e if matches!(e, safe_fs::SafeFsError::NotAFile(_)) || is_not_a_dir(&e) => {
            CoreError::NotFound(format!("no such file: {id}"))
        }
        e @ safe_fs::SafeFsError::Symlink(_) => {
            CoreError::Invalid(format!("invalid file path \"{id}\": {e}"))
        }
        e => CoreError::Failed(format!("cannot read {id}: {e}")),
    };
    match safe_fs::open_dir(&stored.dir, &rel) {
        Ok(fd) => {
            let prefix = if parts.is_empty() {
                app.as_str().to_string()
            } else {
                format!("{app}{SEPARATOR}{}", parts.join("/"))
            };
            let nodes = list(&fd, &prefix, parts.is_empty(), 0)
                .map_err(|e| CoreError::io(format!("cannot read {id}"), e))?;
            Ok(FileLookup::Dir(nodes))
        }
        Err(e) if !is_not_a_dir(&e) => Err(failed(e)),
        Err(_) => {
            let file = safe_fs::open_file(&stored.dir, &rel).map_err(failed)?;
            let size = file
                .metadata()
                .map_err(|e| CoreError::io(format!("cannot read {id}"), e))?
                .len();
            Ok(FileLookup::File {
                file,
                mime: mime_type(parts.last().copied().unwrap_or("")),
                size,
            })
        }
    }
}

fn is_not_a_dir(e: &safe_fs::SafeFsError) -> bool {
    matches!(e, safe_fs::SafeFsError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR))
}

/// A MIME type by file extension (case-insensitive); `application/octet-stream` otherwise.
/// Text types are served as `text/plain`, as the spec's example does for the compose file.
pub fn mime_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") {
        return "application/gzip";
    }
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "yml" | "yaml" | "txt" | "env" | "cfg" | "conf" | "ini" | "sh" | "log" | "csv" | "lic"
        | "crt" | "pem" | "toml" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        "gz" | "tgz" => "application/gzip",
        "pfx" | "p12" => "application/x-pkcs12",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/vnd.microsoft.icon",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

impl super::lifecycle::Apps {
    /// The stored apps' ids, sorted: the Files API's "instances" category.
    pub fn instance_ids(&self) -> CoreResult<Vec<AppId>> {
        Ok(self
            .store()
            .list()?
            .into_iter()
            .map(|a| a.record.id)
            .collect())
    }

    /// [`lookup`] on a blocking thread.
    pub async fn file(&self, id: &str) -> CoreResult<FileLookup> {
        lookup_blocking(self.store().clone(), id).await
    }
}

/// [`lookup`] in `store` on a blocking thread.
pub async fn lookup_blocking(store: std::sync::Arc<AppStore>, id: &str) -> CoreResult<FileLookup> {
    let id = id.to_string();
    tokio::task::spawn_blocking(move || lookup(&store, &id))
        .await
        .map_err(|e| CoreError::Failed(format!("file lookup failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::apps::AppConfig;
    use std::fs;

    #[test]
    fn paths_that_could_escape_are_invalid() {
        assert_eq!(path_parts("").unwrap(), Vec::<&str>::new());
        assert_eq!(path_parts("a/b.txt").unwrap(), vec!["a", "b.txt"]);
        assert_eq!(path_parts("Resources/").unwrap(), vec!["Resources"]);
        assert_eq!(path_parts("..x/y..").unwrap(), vec!["..x", "y.."]);
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a/./b",
            "/etc/passwd",
            "/",
            "a//b",
            "a/b//",
            "a\0b",
        ] {
            assert!(
                matches!(path_parts(bad), Err(CoreError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn ids_split_at_the_separator_after_a_known_app() {
        let apps = ["web:1", "a//b:1"];
        let is_app = |a: &AppId| apps.contains(&a.as_str());
        assert_eq!(split_id("web:1", is_app), (AppId::from("web:1"), None));
        assert_eq!(
            split_id("web:1//x/y", is_app),
            (AppId::from("web:1"), Some("x/y"))
        );
        assert_eq!(
            split_id("a//b:1//c", is_app),
            (AppId::from("a//b:1"), Some("c"))
        );
        assert_eq!(
            split_id("nope:1//c//d", is_app),
            (AppId::from("nope:1"), Some("c//d"))
        );
        assert_eq!(split_id("nope:1", is_app), (AppId::from("nope:1"), None));
        // An absolute path after the separator stays absolute, to be refused.
        assert_eq!(
            split_id("web:1///etc", is_app),
            (AppId::from("web:1"), Some("/etc"))
        );
    }

    #[test]
    fn mime_types_by_extension() {
        assert_eq!(mime_type("docker-compose.yml"), "text/plain");
        assert_eq!(mime_type("Manual.PDF"), "application/pdf");
        assert_eq!(mime_type("tutorial.mp4"), "video/mp4");
        assert_eq!(mime_type("icon.svg"), "image/svg+xml");
        assert_eq!(mime_type("x.tar.gz"), "application/gzip");
        assert_eq!(mime_type("noext"), "application/octet-stream");
        assert_eq!(mime_type(".env"), "text/plain");
    }

    fn store_with_app() -> (tempfile::TempDir, AppStore, AppId) {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(&tmp.path().join("apps")).unwrap();
        let config = AppConfig {
            name: "example app".into(),
            version: "1.0".into(),
            ..Default::default()
        };
        let staged = store.stage(config).unwrap();
        let d = staged.dir().to_path_buf();
        fs::write(d.join("compose.yaml"), "services: {}\n").unwrap();
        fs::write(d.join("Manual.pdf"), b"%PDF-1.4").unwrap();
        fs::create_dir_all(d.join("Resources/deep")).unwrap();
        fs::write(d.join("Resources/tutorial.mp4"), b"mp4").unwrap();
        fs::write(d.join("Resources/deep/x.txt"), b"x").unwrap();
        let id = store.insert(staged, false).unwrap().id().clone();
        (tmp, store, id)
    }

    fn names(nodes: &[FileNode]) -> Vec<&str> {
        nodes.iter().map(FileNode::name).collect()
    }

    #[test]
    fn lookup_lists_the_tree_and_opens_files() {
        let (_tmp, store, app) = store_with_app();
        let FileLookup::Dir(root) = lookup(&store, app.as_str()).unwrap() else {
            panic!("the root is a directory");
        };
        // gantry's record is not part of the bundle.
        assert_eq!(names(&root), ["Manual.pdf", "Resources", "compose.yaml"]);
        let FileNode::Dir { id, entries, .. } = &root[1] else {
            panic!("Resources is a directory")
        };
        assert_eq!(id, "example app:1.0//Resources");
        assert_eq!(names(entries), ["deep", "tutorial.mp4"]);
        assert_eq!(
            entries[1],
            FileNode::File {
                name: "tutorial.mp4".into(),
                id: "example app:1.0//Resources/tutorial.mp4".into(),
                mime: "video/mp4",
                size: 3,
            }
        );
        let FileLookup::Dir(deep) = lookup(&store, "example app:1.0//Resources/deep").unwrap()
        else {
            panic!("deep is a directory")
        };
        assert_eq!(names(&deep), ["x.txt"]);
        let FileNode::File { id, .. } = &deep[0] else {
            panic!()
        };
        assert_eq!(id, "example app:1.0//Resources/deep/x.txt");

        let FileLookup::File { mime, size, .. } =
            lookup(&store, "example app:1.0//Manual.pdf").unwrap()
        else {
            panic!("Manual.pdf is a file")
        };
        assert_eq!((mime, size), ("application/pdf", 8));
    }

    #[test]
    fn lookup_refuses_escapes_and_reports_unknowns() {
        let (_tmp, store, app) = store_with_app();
        let dir = store.app_dir(&app);
        std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("Resources/file-link")).unwrap();
        for bad in [
            "example app:1.0//../x",
            "example app:1.0//Resources/../../apps",
            "example app:1.0///etc/passwd",
            "example app:1.0//link",
            "example app:1.0//link/hostname",
            "example app:1.0//Resources/file-link",
        ] {
            assert!(
                matches!(lookup(&store, bad), Err(e) if e.is(crate::core::ErrorKind::Invalid)),
                "{bad} was not refused"
            );
        }
        for missing in [
            "other:1",
            "other:1//x",
            "example app:1.0//nope",
            "example app:1.0//Manual.pdf/x",
            "example app:1.0//gantry-app.json",
        ] {
            assert!(
                matches!(lookup(&store, missing), Err(e) if e.is(crate::core::ErrorKind::NotFound)),
                "{missing} was found"
            );
        }
        // Symlinks are not listed.
        let FileLookup::Dir(root) = lookup(&store, app.as_str()).unwrap() else {
            panic!()
        };
        assert!(!names(&root).contains(&"link"));
    }
}
