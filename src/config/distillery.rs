//! What the Distillery dialect adds to the configuration: listeners authenticated by one of
//! several named tokens (`auth = "tokens"`), and the `[snapshots]` section (where snapshots
//! and backups of apps go, how many backups are kept).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{bad, ConfigError};

/// Tokens shorter than this are refused (as for `auth = "token"`).
const MIN_TOKEN_LEN: usize = 16;

/// One token of a `tokens` listener and the name a client using it is known by.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for NamedToken {
    /// The name only: a printed configuration never shows a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamedToken({})", self.name)
    }
}

/// Reads a tokens file: one `NAME TOKEN` per line (separated by blanks), `#` comments and
/// blank lines ignored. Names are `[A-Za-z0-9._-]`, tokens at least 16 characters; both
/// unique; at least one token.
pub fn read_tokens(path: &Path) -> Result<Vec<NamedToken>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tokens(&text).map_err(|m| bad("token_file", format!("{}: {m}", path.display())))
}

fn parse_tokens(text: &str) -> Result<Vec<NamedToken>, String> {
    let mut out: Vec<NamedToken> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected \"NAME TOKEN\"", n + 1));
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "line {}: the name \"{name}\" may only use letters, digits, '.', '_' and '-'",
                n + 1
            ));
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "line {}: the token of \"{name}\" must be at least {MIN_TOKEN_LEN} characters",
                n + 1
            ));
        }
        if out.iter().any(|t| t.name == name || t.token == token) {
            return Err(format!(
                "line {}: \"{name}\" or its token is listed twice",
                n + 1
            ));
        }
        out.push(NamedToken {
            name: name.to_string(),
            token: token.to_string(),
        });
    }
    if out.is_empty() {
        return Err("lists no token".into());
    }
    Ok(out)
}

/// Where snapshots and backups of apps go (`[snapshots]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotsConfig {
    pub dir: PathBuf,
    /// Backups (a snapshot of every app) kept; older ones are deleted after a new one.
    pub keep_backups: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshots {
    dir: Option<PathBuf>,
    keep_backups: Option<usize>,
}

pub(super) fn build_snapshots(
    raw: RawSnapshots,
    state_dir: &Path,
) -> Result<SnapshotsConfig, ConfigError> {
    let dir = raw.dir.unwrap_or_else(|| state_dir.join("snapshots"));
    if !dir.is_absolute() {
        return Err(bad(
            "snapshots.dir",
            format!("\"{}\" is not an absolute path", dir.display()),
        ));
    }
    let keep_backups = raw.keep_backups.unwrap_or(3);
    if keep_backups == 0 {
        return Err(bad("snapshots.keep_backups", "must be at least 1"));
    }
    Ok(SnapshotsConfig { dir, keep_backups })
}

#[cfg(test)]
mod tests {
    use super::super::{Auth, Config, Dialect, NoEnv};
    use super::*;

    #[test]
    fn tokens_files_name_each_token() {
        let t = parse_tokens(
            "# who token\nalice 0123456789abcdef\n\n  ci.bot-1   fedcba9876543210xyz \n",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].token.as_str()),
            ("alice", "0123456789abcdef")
        );
        assert_eq!(t[1].name, "ci.bot-1");
        assert_eq!(format!("{:?}", t[0]), "NamedToken(alice)");
        for bad in [
            "",
            "# only a comment\n",
            "alice\n",
            "alice 0123456789abcdef extra\n",
            "alice short\n",
            "al/ice 0123456789abcdef\n",
            "a 0123456789abcdef\na 0123456789abcdeg\n",
            "a 0123456789abcdef\nb 0123456789abcdef\n",
        ] {
            assert!(parse_tokens(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../systemd/gantry.toml.example");
        let c = Config::parse(text, &NoEnv).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].dialect, Dialect::Transfer);
        assert_eq!(c.snapshots.keep_backups, 3);
        assert_eq!(c.apps.health_timeout.as_secs(), 300);
    }

    #[test]
    fn distillery_listeners_take_named_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "admin 0123456789abcdef0123\n").unwrap();
        let listener = |auth: &str| {
            format!(
                "state_dir = \"/srv/g\"\n[[listeners]]\ndialect = \"distillery\"\n{auth}token_file = \"{}\"\n",
                path.display()
            )
        };
        let c = Config::parse(&listener(""), &NoEnv).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.dialect, Dialect::Distillery);
        assert_eq!(l.address.to_string(), "127.0.0.1:54171");
        let Auth::Tokens { tokens } = &l.auth else {
            panic!("{:?}", l.auth)
        };
        assert_eq!(tokens[0].name, "admin");
        assert_eq!(c.snapshots.dir, Path::new("/srv/g/snapshots"));
        assert_eq!(c.snapshots.keep_backups, 3);
        // Only named tokens authenticate a distillery client.
        let e = Config::parse(&listener("auth = \"token\"\n"), &NoEnv).unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
        // Named tokens are bearer tokens too: not in clear on the network unless said.
        let open = "address = \"0.0.0.0:54171\"\n";
        let e = Config::parse(&listener(open), &NoEnv).unwrap_err();
        assert!(e.to_string().contains("allow_plain_http"), "{e}");
        let plain = format!("{open}allow_plain_http = true\n");
        assert!(Config::parse(&listener(&plain), &NoEnv).is_ok());
        let e = Config::parse("[[listeners]]\ndialect = \"distillery\"\n", &NoEnv).unwrap_err();
        assert!(e.to_string().contains("token_file"), "{e}");
        for (text, key) in [
            ("[snapshots]\ndir = \"rel\"\n", "snapshots.dir"),
            ("[snapshots]\nkeep_backups = 0\n", "snapshots.keep_backups"),
        ] {
            let e = Config::parse(text, &NoEnv).unwrap_err();
            assert!(
                matches!(e.root(), ConfigError::Value { key: k, .. } if k == key),
                "{e}"
            );
        }
    }
}
