//! What commands print on stdout: aligned tables for people, JSON for scripts.

use std::io::Write;

use serde_json::Value;

use super::client::{CliError, CliResult, Client};
use super::Opts;

/// Rows under a header, each column as wide as its widest cell; the last column is not
/// padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::io("stdout", e)),
        _ => Ok(()),
    }
}

/// `value` as pretty JSON and a newline.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::io("JSON", e))?;
    print(&format!("{text}\n"))
}

/// A Unix time as `2026-12-01 14:03` (UTC), or how long ago when recent.
pub fn when(unix_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if unix_secs <= now && now - unix_secs < 3600 * 24 {
        return format!(
            "{} ago",
            super::progress::duration((now - unix_secs) as f64)
        );
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    crate::core::apps::store::rfc3339(t)[..16].replace('T', " ")
}

/// `v` as the model `T`.
pub fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> CliResult<T> {
    T::deserialize(v).map_err(|e| CliError::io("the daemon's answer is not the JSON expected", e))
}

/// The JSON list at `path` (`[]` for 204 No Content); with `--json` it is printed as it is
/// and `None` returned.
pub async fn list(client: &Client, path: &str, opts: &Opts) -> CliResult<Option<Value>> {
    let value: Value = client
        .get_json(path)
        .await?
        .unwrap_or(Value::Array(Vec::new()));
    if opts.json {
        json(&value)?;
        return Ok(None);
    }
    Ok(Some(value))
}

/// What a command did: `value` with `--json`, else `text`.
pub fn say(opts: &Opts, value: &Value, text: &str) -> CliResult<()> {
    if opts.json {
        json(value)
    } else {
        print(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let t = table(
            &["ID", "STATUS", "X"],
            &[
                vec!["web:1".into(), "Running".into(), "a".into()],
                vec!["database:10".into(), "Stopped".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "ID           STATUS   X\nweb:1        Running  a\ndatabase:10  Stopped  \n"
        );
    }

    #[test]
    fn old_times_are_utc_dates() {
        assert_eq!(when(1_700_000_000), "2023-11-14 22:13");
    }
}
