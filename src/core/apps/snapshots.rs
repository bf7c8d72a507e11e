//! Snapshots and backups of apps: an app's export with its images (the same ZIP as the
//! Transfer export), written into the snapshots directory under a temp name, synced and then
//! renamed, so a listed snapshot is always complete. A backup is a directory holding a
//! snapshot of every app, built under a temp name and renamed likewise; the newest
//! `keep_backups` are kept.
//!
//! Layout: `<dir>/<project slug>-<UTC time>.zip` for snapshots, `<dir>/backups/<UTC
//! time>/<project slug>.zip` for backups. Temp names start with `.tmp-` and are removed at
//! start.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Apps, LineFn, Run};
use super::store::rfc3339;
use super::AppId;
use crate::core::{CoreError, CoreResult};

const TEMP_PREFIX: &str = ".tmp-";
const BACKUPS: &str = "backups";

/// A snapshot file, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The file name (`<slug>-<time>.zip`), or for a backup's part `<time>/<slug>.zip`.
    pub name: String,
    pub path: PathBuf,
    /// When it was written (its modification time).
    pub created: SystemTime,
    pub size: u64,
    /// Part of a backup.
    pub backup: bool,
}

/// The snapshots directory.
pub struct Snapshots {
    dir: PathBuf,
    keep_backups: usize,
}

impl Snapshots {
    /// Opens (creating) `dir` and removes what interrupted snapshots and backups left.
    pub fn open(dir: &Path, keep_backups: usize) -> CoreResult<Self> {
        for d in [dir.to_path_buf(), dir.join(BACKUPS)] {
            std::fs::create_dir_all(&d)
                .map_err(|e| CoreError::io(format!("cannot create {}", d.display()), e))?;
            remove_temps(&d);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            keep_backups: keep_backups.max(1),
        })
    }

    /// Writes a snapshot of the app `id`. Cancelled, the temp file is removed.
    pub async fn snapshot(&self, apps: &Apps, id: &AppId, run: Run<'_>) -> CoreResult<Snapshot> {
        let name = unique_name(&self.dir, &id.slug(), &stamp(), ".zip");
        (run.out)(&format!("Writing the snapshot {name}"));
        write_export(apps, id, &self.dir, &name, run.cancel).await?;
        sync_dir(&self.dir)?;
        let info = info(&self.dir.join(&name), name, false)?;
        (run.out)(&format!(
            "Snapshot {} written ({} bytes)",
            info.name, info.size
        ));
        Ok(info)
    }

    /// Writes a backup: a snapshot of every app, then removes the oldest backups beyond
    /// `keep_backups`. Cancelled or failed, nothing of it stays.
    pub async fn backup(&self, apps: &Apps, run: Run<'_>) -> CoreResult<Vec<Snapshot>> {
        let root = self.dir.join(BACKUPS);
        let name = unique_name(&root, "", &stamp(), "");
        let temp = root.join(format!("{TEMP_PREFIX}{name}"));
        std::fs::create_dir(&temp)
            .map_err(|e| CoreError::io(format!("cannot create {}", temp.display()), e))?;
        let written = self.fill_backup(apps, &temp, run).await;
        let done = written.and_then(|n| {
            let dir = root.join(&name);
            std::fs::rename(&temp, &dir)
                .map_err(|e| CoreError::io(format!("cannot rename {}", temp.display()), e))?;
            sync_dir(&root)?;
            Ok(n)
        });
        if done.is_err() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        let names = done?;
        (run.out)(&format!("Backup {name} written ({} apps)", names.len()));
        self.prune_backups(run.out);
        names
            .into_iter()
            .map(|file| {
                info(
                    &root.join(&name).join(&file),
                    format!("{name}/{file}"),
                    true,
                )
            })
            .collect()
    }

    /// Snapshots every app into `dir`; the file names written.
    async fn fill_backup(&self, apps: &Apps, dir: &Path, run: Run<'_>) -> CoreResult<Vec<String>> {
        let mut names = Vec::new();
        for view in apps.list().await? {
            let id = view.app.id();
            let file = format!("{}.zip", id.slug());
            (run.out)(&format!("Writing the snapshot of {id}"));
            write_export(apps, id, dir, &file, run.cancel).await?;
            names.push(file);
        }
        sync_dir(dir)?;
        Ok(names)
    }

    /// Removes the oldest backups beyond `keep_backups` (names sort by time).
    fn prune_backups(&self, on_line: LineFn<'_>) {
        let root = self.dir.join(BACKUPS);
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(TEMP_PREFIX))
            .collect();
        names.sort();
        let extra = names.len().saturating_sub(self.keep_backups);
        for old in &names[..extra] {
            on_line(&format!("Removing the old backup {old}"));
            if let Err(e) = std::fs::remove_dir_all(root.join(old)) {
                tracing::warn!(backup = %old, error = %e, "cannot remove an old backup");
            }
        }
    }

    /// Every snapshot and backup part, oldest first.
    pub fn list(&self) -> CoreResult<Vec<Snapshot>> {
        let mut out = list_zips(&self.dir, "", false)?;
        let root = self.dir.join(BACKUPS);
        for entry in read_dir(&root)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !name.starts_with(TEMP_PREFIX) {
                out.extend(list_zips(&root.join(&name), &format!("{name}/"), true)?);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(out)
    }
}

/// Streams the export of `id` (with its images) into `dir/.tmp-<name>`, syncs it and renames
/// it to `dir/<name>`; the temp file goes when anything fails or `cancel` fires.
async fn write_export(
    apps: &Apps,
    id: &AppId,
    dir: &Path,
    name: &str,
    cancel: &CancellationToken,
) -> CoreResult<()> {
    let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let result = async {
        let mut export = apps.export(id, true).await?;
        let io = |e| CoreError::io(format!("cannot write {}", temp.display()), e);
        let mut file = tokio::fs::File::create(&temp).await.map_err(io)?;
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => {
                    return Err(CoreError::Cancelled(format!("the snapshot of {id} was cancelled")))
                }
                c = export.next() => c,
            };
            match chunk {
                Some(Ok(bytes)) => file.write_all(&bytes).await.map_err(io)?,
                Some(Err(e)) => return Err(CoreError::io(format!("cannot export {id}"), e)),
                None => break,
            }
        }
        file.sync_all().await.map_err(io)?;
        tokio::fs::rename(&temp, dir.join(name)).await.map_err(io)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    result
}

fn read_dir(dir: &Path) -> CoreResult<Vec<std::fs::DirEntry>> {
    std::fs::read_dir(dir)
        .and_then(|d| d.collect())
        .map_err(|e| CoreError::io(format!("cannot read {}", dir.display()), e))
}

/// The `.zip` files in `dir`, named `prefix` + their file name.
fn list_zips(dir: &Path, prefix: &str, backup: bool) -> CoreResult<Vec<Snapshot>> {
    let mut out = Vec::new();
    for entry in read_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".zip") && !name.starts_with(TEMP_PREFIX) {
            out.push(info(&entry.path(), format!("{prefix}{name}"), backup)?);
        }
    }
    Ok(out)
}

fn info(path: &Path, name: String, backup: bool) -> CoreResult<Snapshot> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CoreError::io(format!("cannot read {}", path.display()), e))?;
    Ok(Snapshot {
        name,
        path: path.to_path_buf(),
        created: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        size: meta.len(),
        backup,
    })
}

/// The UTC time as a file name part: `20261130T120000Z`.
fn stamp() -> String {
    rfc3339(SystemTime::now()).replace(['-', ':'], "")
}

/// `<slug>-<stamp><ext>` (or `<stamp><ext>` without a slug), with `-2`, `-3`, ... before the
/// extension when that name is taken.
fn unique_name(dir: &Path, slug: &str, stamp: &str, ext: &str) -> String {
    let base = if slug.is_empty() {
        stamp.to_string()
    } else {
        format!("{slug}-{stamp}")
    };
    (1..)
        .map(|n| match n {
            1 => format!("{base}{ext}"),
            n => format!("{base}-{n}{ext}"),
        })
        .find(|n| !dir.join(n).exists() && !dir.join(format!("{TEMP_PREFIX}{n}")).exists())
        .expect("an unused name exists")
}

fn sync_dir(dir: &Path) -> CoreResult<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CoreError::io(format!("cannot sync {}", dir.display()), e))
}

/// Removes what interrupted snapshots or backups left in `dir`.
fn remove_temps(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing an interrupted snapshot");
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sort_by_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = stamp();
        assert_eq!(s.len(), "20261130T120000Z".len(), "{s}");
        let a = unique_name(dir.path(), "web1", "20261130T120000Z", ".zip");
        assert_eq!(a, "web1-20261130T120000Z.zip");
        std::fs::write(dir.path().join(&a), b"x").unwrap();
        let b = unique_name(dir.path(), "web1", "20261130T120000Z", ".zip");
        assert_eq!(b, "web1-20261130T120000Z-2.zip");
        assert_eq!(
            unique_name(dir.path(), "", "20261130T120000Z", ""),
            "20261130T120000Z"
        );
    }

    #[test]
    fn open_removes_leftovers_and_lists_snapshots_and_backup_parts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("backups/20260101T000000Z")).unwrap();
        std::fs::create_dir_all(d.join("backups/.tmp-20260102T000000Z")).unwrap();
        std::fs::write(d.join(".tmp-web-1.zip"), b"half").unwrap();
        std::fs::write(d.join("web-20260101T000000Z.zip"), b"zip").unwrap();
        std::fs::write(d.join("notes.txt"), b"not a snapshot").unwrap();
        std::fs::write(d.join("backups/20260101T000000Z/web.zip"), b"zip").unwrap();
        let s = Snapshots::open(d, 2).unwrap();
        assert!(!d.join(".tmp-web-1.zip").exists());
        assert!(!d.join("backups/.tmp-20260102T000000Z").exists());
        let mut names: Vec<(String, bool)> = s
            .list()
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.backup))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("20260101T000000Z/web.zip".to_string(), true),
                ("web-20260101T000000Z.zip".to_string(), false)
            ]
        );
        for n in ["20260102T000000Z", "20260103T000000Z"] {
            std::fs::create_dir(d.join("backups").join(n)).unwrap();
        }
        s.prune_backups(&|_| {});
        let left: Vec<_> = read_dir(&d.join("backups"))
            .unwrap()
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left.contains(&"20260101T000000Z".to_string()));
    }
}
