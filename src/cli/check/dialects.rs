//! The checks of what the dialects need besides Docker: the files their listeners
//! authenticate with (a token, a tokens file, the duxcore core key), and the Flow Manager's
//! socket directory (gantry can make and write it, dockerd sees it, a container's socket
//! path fits a unix socket address).

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::AccessFlags;

use super::{Level, Report};
use crate::config::{self, Auth, Config, Dialect};

/// A unix socket path holds at most this many bytes (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;
/// The longest Flow Manager container name; the name names the socket file.
const MAX_NAME: usize = 64;
const SOCKET_SUFFIX: &str = ".sock";

const AS_ROOT: &str = "run `gantry check` as root to check it (the daemon runs as root)";

/// What a secret file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Secret {
    Token,
    Tokens,
    CoreKey,
}

impl Secret {
    fn what(self) -> &'static str {
        match self {
            Secret::Token => "token file",
            Secret::Tokens => "tokens file",
            Secret::CoreKey => "core key file",
        }
    }

    /// How to make a good one at `p`.
    fn create(self, p: &Path) -> String {
        let p = p.display();
        match self {
            Secret::Token => {
                format!("create it: `umask 077; head -c 32 /dev/urandom | base64 > {p}`")
            }
            Secret::Tokens => format!(
                "one `NAME TOKEN` per line, tokens of 16 characters or more: \
                 `umask 077; echo \"admin $(head -c 32 /dev/urandom | base64)\" > {p}`"
            ),
            Secret::CoreKey => format!(
                "create it (`umask 077; head -c 1024 /dev/urandom > {p}`) and give the core \
                 its base64 (`base64 -w0 {p}`)"
            ),
        }
    }

    /// What the readable file holds, or what is wrong with it.
    fn content(self, p: &Path) -> Result<String, String> {
        match self {
            Secret::Token => {
                let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
                match text.trim().len() {
                    n if n >= 16 => Ok("a token of 16 characters or more".into()),
                    _ => Err("the token is shorter than 16 characters".into()),
                }
            }
            Secret::Tokens => {
                let tokens = config::read_tokens(p).map_err(|e| e.to_string())?;
                let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
                Ok(format!("{} token(s): {}", names.len(), names.join(", ")))
            }
            Secret::CoreKey => {
                let key = config::read_corekey(p).map_err(|e| e.to_string())?;
                Ok(format!("a key of {} bytes", key.len()))
            }
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The files the listeners authenticate with, each once: present, readable, well formed, and
/// not readable by every user.
pub(super) fn secrets(report: &mut Report, c: &Config) {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut files: Vec<(Dialect, &Path, Secret)> = Vec::new();
    for l in &c.listeners {
        let kind = match l.auth {
            Auth::Token { .. } => Secret::Token,
            Auth::Tokens { .. } => Secret::Tokens,
            Auth::Loopback | Auth::None | Auth::ClientCert => continue,
        };
        if let Some(p) = &l.token_file {
            files.push((l.dialect, p, kind));
        }
    }
    if c.listeners.iter().any(|l| l.dialect == Dialect::Duxcore) {
        files.push((Dialect::Duxcore, &c.duxcore.corekey_file, Secret::CoreKey));
    }
    for (dialect, path, kind) in files {
        if !seen.iter().any(|s| s == path) {
            seen.push(path.to_path_buf());
            secret(report, &format!("{dialect} {}", kind.what()), path, kind);
        }
    }
}

fn secret(report: &mut Report, check: &str, path: &Path, kind: Secret) {
    let shown = path.display();
    let opened = std::fs::File::open(path).and_then(|f| f.metadata());
    let meta = match opened {
        Ok(m) if m.is_file() => m,
        Ok(_) => return report.error(check, format!("{shown} is not a file"), &kind.create(path)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let msg = format!("{shown} is missing: gantry does not start without it");
            return report.error(check, msg, &kind.create(path));
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied && !is_root() => {
            return report.warn(
                check,
                format!("{shown}: this user may not read it"),
                AS_ROOT,
            );
        }
        Err(e) => return report.error(check, format!("{shown}: {e}"), &kind.create(path)),
    };
    match kind.content(path) {
        Err(why) => report.error(check, why, &kind.create(path)),
        Ok(what) if meta.permissions().mode() & 0o004 != 0 => report.warn(
            check,
            format!(
                "{shown}: {what}, readable by every user (mode {:o})",
                meta.permissions().mode() & 0o7777
            ),
            &format!("`chmod o-rwx {shown}`"),
        ),
        Ok(what) => report.ok(check, format!("{shown}: {what}")),
    }
}

/// Each listener's TLS files, once per certificate and key: they load as the daemon loads
/// them (chain, key, client CA), and the key is not readable by every user.
pub(super) fn tls(report: &mut Report, c: &Config) {
    let mut seen: Vec<&config::TlsFiles> = Vec::new();
    for l in &c.listeners {
        let Some(files) = &l.tls else { continue };
        if !seen.contains(&files) {
            seen.push(files);
            tls_files(report, &format!("{} TLS", l.dialect), files);
        }
    }
}

fn tls_files(report: &mut Report, check: &str, files: &config::TlsFiles) {
    let key = files.key.display();
    let paths = [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ];
    for p in paths.into_iter().flatten() {
        if let Err(e) = std::fs::File::open(p) {
            if e.kind() == ErrorKind::PermissionDenied && !is_root() {
                let msg = format!("{}: this user may not read it", p.display());
                return report.warn(check, msg, AS_ROOT);
            }
        }
    }
    let hint = "tls_cert_file: the PEM certificate chain, tls_key_file: its PEM private key \
                (client_ca_file: the PEM CA of client certificates); gantry does not start \
                without them";
    if let Err(e) = crate::server::tls::Tls::load(files) {
        return report.error(check, e, hint);
    }
    let mode = std::fs::metadata(&files.key).map_or(0, |m| m.permissions().mode());
    if mode & 0o004 != 0 {
        let msg = format!(
            "the key {key} is readable by every user (mode {:o})",
            mode & 0o7777
        );
        return report.warn(check, msg, &format!("`chmod o-rwx {key}`"));
    }
    let ca = match &files.client_ca {
        Some(ca) => format!(", client CA {}", ca.display()),
        None => String::new(),
    };
    report.ok(
        check,
        format!("{} and {key} load{ca}", files.cert.display()),
    );
}

/// What gantry's systemd unit lets it see and write, as `systemctl show` tells.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UnitSandbox {
    protect_system: String,
    private_tmp: bool,
    /// ReadWritePaths=, StateDirectory= and RuntimeDirectory= as paths.
    writable: Vec<PathBuf>,
}

impl UnitSandbox {
    /// gantry's unit, when systemd knows it.
    pub(super) fn of_gantry() -> Option<Self> {
        let out = std::process::Command::new("systemctl")
            .args([
                "show",
                "gantry.service",
                "-p",
                "LoadState",
                "-p",
                "ProtectSystem",
            ])
            .args([
                "-p",
                "PrivateTmp",
                "-p",
                "ReadWritePaths",
                "-p",
                "StateDirectory",
            ])
            .args(["-p", "RuntimeDirectory"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// `systemctl show`'s `KEY=VALUE` lines; None when the unit is not loaded.
    fn parse(text: &str) -> Option<Self> {
        let mut unit = UnitSandbox::default();
        let mut loaded = false;
        for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
            let paths = value
                .split_whitespace()
                .map(|p| p.trim_start_matches(['-', '+']));
            match key {
                "LoadState" => loaded = value == "loaded",
                "ProtectSystem" => unit.protect_system = value.to_string(),
                "PrivateTmp" => unit.private_tmp = value == "yes",
                "ReadWritePaths" => unit.writable.extend(paths.map(PathBuf::from)),
                "StateDirectory" => unit
                    .writable
                    .extend(paths.map(|d| Path::new("/var/lib").join(d))),
                "RuntimeDirectory" => unit
                    .writable
                    .extend(paths.map(|d| Path::new("/run").join(d))),
                _ => {}
            }
        }
        loaded.then_some(unit)
    }

    /// What the unit makes read-only of `dir` (None: gantry may write there).
    fn read_only(&self, dir: &Path) -> Option<String> {
        if self.writable.iter().any(|w| dir.starts_with(w)) {
            return None;
        }
        let protected: &[&str] = match self.protect_system.as_str() {
            "strict" => &["/"],
            "full" => &["/usr", "/boot", "/efi", "/etc"],
            "yes" => &["/usr", "/boot", "/efi"],
            _ => &[],
        };
        let tmp = self.private_tmp && under_tmp(dir);
        (!tmp && protected.iter().any(|p| dir.starts_with(p)))
            .then(|| format!("ProtectSystem={}", self.protect_system))
    }
}

fn under_tmp(dir: &Path) -> bool {
    dir.starts_with("/tmp") || dir.starts_with("/var/tmp")
}

/// The Flow Manager's socket directory: each problem found, or one ok.
pub(super) fn flow_socket_dir(report: &mut Report, dir: &Path, unit: Option<&UnitSandbox>) {
    let check = "flowmanager socket_dir";
    let mut problems = Vec::new();
    let state = dir_state(dir, &mut problems);
    socket_room(dir, &mut problems);
    sandbox(dir, unit, &mut problems);
    if problems.is_empty() {
        report.ok(check, format!("{}: {state}", dir.display()));
    }
    for (level, message, hint) in problems {
        report.add(check, level, message, Some(&hint));
    }
}

type Problems = Vec<(Level, String, String)>;

/// Whether gantry can make (or use) `dir`; what it is when fine.
fn dir_state(dir: &Path, problems: &mut Problems) -> &'static str {
    let shown = dir.display();
    let elsewhere = "set [flowmanager] socket_dir to a directory gantry may write, e.g. \
                     /var/lib/gantry/kawaflow";
    let (existing, state) = match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            let msg = format!("{shown} exists and is not a directory");
            problems.push((Level::Error, msg, elsewhere.into()));
            return "not a directory";
        }
        Ok(m) => {
            if m.permissions().mode() & 0o077 != 0 {
                let msg = format!(
                    "{shown} (mode {:o}) lets other users in: each container's socket there \
                     (mode 0666) is theirs to use",
                    m.permissions().mode() & 0o7777
                );
                problems.push((Level::Warning, msg, format!("`chmod 700 {shown}`")));
            }
            (
                dir,
                "usable; container names up to 64 characters get a socket",
            )
        }
        Err(_) => {
            let parent = dir
                .ancestors()
                .find(|p| p.exists())
                .unwrap_or(Path::new("/"));
            (
                parent,
                "does not exist yet: gantry creates it at start (mode 0700)",
            )
        }
    };
    match nix::unistd::access(existing, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) => {}
        Err(Errno::EACCES) if !is_root() => {
            let msg = format!("{}: this user may not write there", existing.display());
            problems.push((Level::Warning, msg, AS_ROOT.into()));
        }
        Err(e) => {
            let msg = format!("gantry cannot write {}: {e}", existing.display());
            problems.push((Level::Error, msg, elsewhere.into()));
        }
    }
    state
}

/// Whether `<dir>/<name>.sock` fits a unix socket address for every container name.
fn socket_room(dir: &Path, problems: &mut Problems) {
    let fixed = dir.as_os_str().len() + 1 + SOCKET_SUFFIX.len();
    let room = SUN_PATH_MAX.saturating_sub(fixed);
    let hint = "choose a shorter [flowmanager] socket_dir";
    if room < 2 {
        let msg = format!(
            "{} is too long: no container's socket path fits a unix socket address \
             ({SUN_PATH_MAX} bytes)",
            dir.display()
        );
        problems.push((Level::Error, msg, hint.into()));
    } else if room < MAX_NAME {
        let msg = format!(
            "containers named with more than {room} characters get no socket: a unix socket \
             path holds {SUN_PATH_MAX} bytes"
        );
        problems.push((Level::Warning, msg, hint.into()));
    }
}

/// Whether gantry's unit lets it write `dir` and dockerd see it.
fn sandbox(dir: &Path, unit: Option<&UnitSandbox>, problems: &mut Problems) {
    let hint = "set [flowmanager] socket_dir under /var/lib/gantry (e.g. \
                /var/lib/gantry/kawaflow), or add it to ReadWritePaths= (`systemctl edit gantry`)";
    let msg = match unit {
        Some(u) if u.private_tmp && under_tmp(dir) => (
            Level::Error,
            format!(
                "{}: gantry's unit has PrivateTmp=yes, so dockerd does not see this directory \
                 and containers cannot reach their sockets",
                dir.display()
            ),
        ),
        Some(u) => match u.read_only(dir) {
            Some(why) => (
                Level::Error,
                format!("gantry's unit makes {} read-only ({why})", dir.display()),
            ),
            None => return,
        },
        None if under_tmp(dir) => (
            Level::Warning,
            format!(
                "{} is under /tmp: under the shipped unit (PrivateTmp=yes) dockerd does not see it",
                dir.display()
            ),
        ),
        None => return,
    };
    problems.push((msg.0, msg.1, hint.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_must_load_and_keep_the_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let files = config::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let judged = |files: &config::TlsFiles| {
            let mut r = Report::default();
            tls_files(&mut r, "transfer TLS", files);
            let f = r.0.pop().unwrap();
            (f.status, f.message)
        };
        assert_eq!(judged(&files).0, Level::Error, "missing files");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=gw", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(judged(&files).0, Level::Ok, "{:?}", judged(&files));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (level, msg) = judged(&files);
        assert_eq!(level, Level::Warning);
        assert!(msg.contains("mode 644"), "{msg}");
        std::fs::write(&cert, "not a certificate").unwrap();
        assert_eq!(judged(&files).0, Level::Error);
    }

    fn levels(r: &Report) -> Vec<(Level, &str)> {
        r.0.iter().map(|f| (f.status, f.message.as_str())).collect()
    }

    #[test]
    fn secrets_are_checked_for_presence_content_and_who_may_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let (key, tokens) = (dir.path().join("corekey.bin"), dir.path().join("tokens"));
        let two = "admin 0123456789abcdef-x\nci 0123456789abcdef-y\n";
        // (file, its content (None: absent), mode, kind, the level, in the message)
        type Case<'a> = (&'a Path, Option<&'a [u8]>, u32, Secret, Level, &'a str);
        let cases: [Case; 7] = [
            (&key, None, 0o600, Secret::CoreKey, Level::Error, "missing"),
            (
                &key,
                Some(b""),
                0o600,
                Secret::CoreKey,
                Level::Error,
                "empty",
            ),
            (
                &key,
                Some(&[7; 48]),
                0o644,
                Secret::CoreKey,
                Level::Warning,
                "user (mode 644)",
            ),
            (
                &key,
                Some(&[7; 48]),
                0o600,
                Secret::CoreKey,
                Level::Ok,
                "a key of 48 bytes",
            ),
            (
                &tokens,
                Some(b"admin short\n"),
                0o600,
                Secret::Tokens,
                Level::Error,
                "16 char",
            ),
            (
                &tokens,
                Some(two.as_bytes()),
                0o640,
                Secret::Tokens,
                Level::Ok,
                "admin, ci",
            ),
            (
                dir.path(),
                None,
                0o700,
                Secret::Token,
                Level::Error,
                "is not a file",
            ),
        ];
        for (i, (path, content, mode, kind, level, said)) in cases.into_iter().enumerate() {
            if let Some(bytes) = content {
                std::fs::write(path, bytes).unwrap();
            }
            if path.exists() {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let mut r = Report::default();
            secret(&mut r, "secret", path, kind);
            let f = &r.0[0];
            assert_eq!(
                (f.status, r.0.len()),
                (level, 1),
                "case {i}: {:?}",
                levels(&r)
            );
            assert!(f.message.contains(said), "case {i}: {:?}", levels(&r));
            if level == Level::Error && kind == Secret::CoreKey {
                assert!(f.hint.as_deref().unwrap().contains("base64 -w0"));
            }
        }
    }

    #[test]
    fn the_unit_sandbox_is_read_from_systemctl_show() {
        let shipped = "LoadState=loaded\nProtectSystem=strict\nPrivateTmp=yes\n\
                       ReadWritePaths=/var/lib/gantry -/srv/extra\nStateDirectory=gantry\n\
                       RuntimeDirectory=\n";
        let u = UnitSandbox::parse(shipped).unwrap();
        assert!(u.private_tmp);
        assert_eq!(u.read_only(Path::new("/var/lib/gantry/kawaflow")), None);
        assert_eq!(u.read_only(Path::new("/srv/extra/sockets")), None);
        assert_eq!(
            u.read_only(Path::new("/srv/kawaflow")).as_deref(),
            Some("ProtectSystem=strict")
        );
        let full = UnitSandbox::parse("LoadState=loaded\nProtectSystem=full\n").unwrap();
        assert!(full.read_only(Path::new("/etc/kawaflow")).is_some());
        assert_eq!(full.read_only(Path::new("/srv/kawaflow")), None);
        assert_eq!(UnitSandbox::parse("LoadState=not-found\n"), None);
    }

    #[test]
    fn the_socket_dir_must_be_writable_private_visible_to_docker_and_short() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("sockets");
        // A unit that confines nothing: only the directory itself is judged here.
        let open = UnitSandbox::default();
        let mut r = Report::default();
        flow_socket_dir(&mut r, &dir, Some(&open));
        assert_eq!(r.0.len(), 1, "{:?}", levels(&r));
        assert_eq!(r.0[0].status, Level::Ok, "{:?}", levels(&r));
        assert!(
            r.0[0].message.contains("creates it at start"),
            "{:?}",
            levels(&r)
        );

        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut r = Report::default();
        flow_socket_dir(&mut r, &dir, Some(&open));
        assert_eq!(r.0[0].status, Level::Warning, "{:?}", levels(&r));
        assert_eq!(
            r.0[0].hint.as_deref(),
            Some(&*format!("`chmod 700 {}`", dir.display()))
        );

        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let mut r = Report::default();
        flow_socket_dir(&mut r, &file, Some(&open));
        assert_eq!(r.0[0].status, Level::Error, "{:?}", levels(&r));

        let long = PathBuf::from(format!("/var/lib/gantry/{}", "d".repeat(60)));
        let mut problems = Vec::new();
        socket_room(&long, &mut problems);
        assert_eq!(problems[0].0, Level::Warning);
        assert!(
            problems[0].1.contains("more than 25 characters"),
            "{problems:?}"
        );
        let longer = PathBuf::from(format!("/{}", "d".repeat(100)));
        let mut problems = Vec::new();
        socket_room(&longer, &mut problems);
        assert_eq!(problems[0].0, Level::Error);

        let shipped = UnitSandbox::parse(
            "LoadState=loaded\nProtectSystem=strict\nPrivateTmp=yes\nStateDirectory=gantry\n",
        )
        .unwrap();
        let mut problems = Vec::new();
        sandbox(
            Path::new("/tmp/kawaflow/sockets"),
            Some(&shipped),
            &mut problems,
        );
        sandbox(Path::new("/srv/kawaflow"), Some(&shipped), &mut problems);
        sandbox(
            Path::new("/var/lib/gantry/kawaflow"),
            Some(&shipped),
            &mut problems,
        );
        sandbox(Path::new("/tmp/kawaflow/sockets"), None, &mut problems);
        let got: Vec<Level> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            got,
            [Level::Error, Level::Error, Level::Warning],
            "{problems:?}"
        );
        assert!(problems[0].1.contains("PrivateTmp=yes"), "{problems:?}");
        assert!(
            problems[1].1.contains("ProtectSystem=strict"),
            "{problems:?}"
        );
    }
}
