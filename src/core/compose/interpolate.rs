//! `${VAR}` interpolation and `.env` files, as docker-compose 1.29 does them.
//!
//! Syntax (compose 1.29's `TemplateWithDefaults`): `$$` is a literal `$`; `$VAR` and `${VAR}`
//! substitute (an unset variable becomes "" with a warning); `${VAR:-default}` uses the default
//! when VAR is unset or empty, `${VAR-default}` only when unset; `${VAR:?message}` fails when
//! VAR is unset or empty, `${VAR?message}` only when unset. A default ends at the first `}`
//! (no nesting). Any other `$` is an invalid interpolation.

use std::collections::HashMap;

/// The longest one interpolated value may become (a `.env` value, a compose string).
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// The most all interpolated values of one `.env` file, or of one compose document, may
/// add up to. With [`MAX_VALUE_BYTES`] this bounds what a `.env` whose variables each repeat
/// the one before can make: it is refused at the first value over the cap, in microseconds.
pub const MAX_EXPANDED_BYTES: usize = 4 << 20;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// The string is not valid template syntax.
    Invalid,
    /// A `${VAR:?message}` / `${VAR?message}` variable was missing; carries the message.
    Required(String),
    /// The value would exceed [`MAX_VALUE_BYTES`].
    TooLarge,
}

/// Why a `.env`-style file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvFileError {
    #[error("variable \"{0}\": its value would be longer than {MAX_VALUE_BYTES} bytes after interpolation")]
    ValueTooLarge(String),
    #[error("variable \"{0}\": the values would add up to more than {MAX_EXPANDED_BYTES} bytes after interpolation")]
    TotalTooLarge(String),
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// Interpolates one string. Variables that are referenced plainly but not set are appended
/// to `missing` (the caller warns once per name).
pub fn interpolate(
    s: &str,
    vars: &HashMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(s.len().min(MAX_VALUE_BYTES));
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        if out.len() > MAX_VALUE_BYTES {
            return Err(InterpolationError::TooLarge);
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_end = after.find('}').ok_or(InterpolationError::Invalid)?;
                let body = &after[1..body_end];
                out.push_str(&braced(body, vars, missing)?);
                rest = &after[body_end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let end = after
                    .char_indices()
                    .find(|(_, c)| !is_name_char(*c))
                    .map(|(i, _)| i)
                    .unwrap_or(after.len());
                out.push_str(&lookup(&after[..end], vars, missing));
                rest = &after[end..];
            }
            _ => return Err(InterpolationError::Invalid),
        }
    }
    out.push_str(rest);
    if out.len() > MAX_VALUE_BYTES {
        return Err(InterpolationError::TooLarge);
    }
    Ok(out)
}

fn lookup(name: &str, vars: &HashMap<String, String>, missing: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            if !missing.iter().any(|m| m == name) {
                missing.push(name.to_string());
            }
            String::new()
        }
    }
}

/// The inside of `${...}`.
fn braced(
    body: &str,
    vars: &HashMap<String, String>,
    missing: &mut Vec<String>,
) -> Result<String, InterpolationError> {
    let mut chars = body.chars();
    if !chars.next().is_some_and(is_name_start) {
        return Err(InterpolationError::Invalid);
    }
    let name_end = body
        .char_indices()
        .find(|(_, c)| !is_name_char(*c))
        .map(|(i, _)| i)
        .unwrap_or(body.len());
    let (name, op) = body.split_at(name_end);
    if op.is_empty() {
        return Ok(lookup(name, vars, missing));
    }
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let required = |msg: &str| {
        InterpolationError::Required(if msg.is_empty() {
            name.to_string()
        } else {
            msg.to_string()
        })
    };
    if let Some(default) = op.strip_prefix(":-") {
        Ok(if set_nonempty {
            value.cloned().unwrap_or_default()
        } else {
            default.to_string()
        })
    } else if let Some(default) = op.strip_prefix('-') {
        Ok(value.cloned().unwrap_or_else(|| default.to_string()))
    } else if let Some(msg) = op.strip_prefix(":?") {
        if set_nonempty {
            Ok(value.cloned().unwrap_or_default())
        } else {
            Err(required(msg))
        }
    } else if let Some(msg) = op.strip_prefix('?') {
        value.cloned().ok_or_else(|| required(msg))
    } else {
        Err(InterpolationError::Invalid)
    }
}

/// Parses a `.env`-style file the way python-dotenv (which compose 1.29 uses) reads the
/// common cases: `KEY=VALUE` lines, optional `export `, `#` comments, blank lines, single
/// quotes taken literally, double quotes with `\n`, `\t`, `\"`, `\\` escapes, unquoted
/// values ending at ` #`. With `interpolate`, `${VAR}` forms in unquoted and double-quoted
/// values are expanded from earlier lines and then `outer` (missing ones become "").
/// A line without `=` sets nothing (dotenv gives it no value). Returns pairs in file order.
/// A value longer than [`MAX_VALUE_BYTES`], or values adding up to more than
/// [`MAX_EXPANDED_BYTES`], after interpolation, refuse the file.
pub fn parse_env_file(
    text: &str,
    outer: &HashMap<String, String>,
    interpolate_values: bool,
) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut known: HashMap<String, String> = outer.clone();
    let mut total = 0usize;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        let value = value.trim_start();
        let (value, expand) = if let Some(inner) = value.strip_prefix('\'') {
            (
                inner.split_once('\'').map_or(inner, |(v, _)| v).to_string(),
                false,
            )
        } else if let Some(inner) = value.strip_prefix('"') {
            (unescape_double_quoted(inner), true)
        } else {
            let v = match value.find(" #") {
                Some(i) => &value[..i],
                None => value,
            };
            (v.trim_end().to_string(), true)
        };
        let value = if interpolate_values && expand {
            let mut ignored = Vec::new();
            match interpolate(&value, &known, &mut ignored) {
                Ok(v) => v,
                Err(InterpolationError::TooLarge) => {
                    return Err(EnvFileError::ValueTooLarge(key.to_string()))
                }
                // dotenv leaves malformed templates as they are.
                Err(_) => value,
            }
        } else {
            value
        };
        if value.len() > MAX_VALUE_BYTES {
            return Err(EnvFileError::ValueTooLarge(key.to_string()));
        }
        total += value.len();
        if total > MAX_EXPANDED_BYTES {
            return Err(EnvFileError::TotalTooLarge(key.to_string()));
        }
        known.insert(key.to_string(), value.clone());
        if let Some(slot) = out.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            out.push((key.to_string(), value));
        }
    }
    Ok(out)
}

fn unescape_double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('\'') => out.push('\''),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(s: &str, v: &HashMap<String, String>) -> Result<String, InterpolationError> {
        let mut missing = Vec::new();
        interpolate(s, v, &mut missing)
    }

    #[test]
    fn plain_and_braced() {
        let v = vars(&[("TAG", "1.2"), ("NAME", "web")]);
        assert_eq!(run("img:${TAG}", &v).unwrap(), "img:1.2");
        assert_eq!(run("$NAME-x", &v).unwrap(), "web-x");
        assert_eq!(run("${NAME}_${TAG}", &v).unwrap(), "web_1.2");
        assert_eq!(run("no vars", &v).unwrap(), "no vars");
        assert_eq!(run("", &v).unwrap(), "");
    }

    #[test]
    fn dollar_dollar_is_literal() {
        let v = vars(&[("A", "x")]);
        assert_eq!(run("$$A", &v).unwrap(), "$A");
        assert_eq!(run("cost $$5 and $${A}", &v).unwrap(), "cost $5 and ${A}");
        assert_eq!(
            run("sh -c 'echo $$HOME'", &v).unwrap(),
            "sh -c 'echo $HOME'"
        );
    }

    #[test]
    fn missing_variable_is_empty_and_reported_once() {
        let v = vars(&[]);
        let mut missing = Vec::new();
        assert_eq!(
            interpolate("a${NOPE}b$NOPE", &v, &mut missing).unwrap(),
            "ab"
        );
        assert_eq!(missing, vec!["NOPE".to_string()]);
    }

    #[test]
    fn defaults() {
        let v = vars(&[("EMPTY", ""), ("SET", "v")]);
        assert_eq!(run("${UNSET:-d}", &v).unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}", &v).unwrap(), "d");
        assert_eq!(run("${SET:-d}", &v).unwrap(), "v");
        assert_eq!(run("${UNSET-d}", &v).unwrap(), "d");
        assert_eq!(run("${EMPTY-d}", &v).unwrap(), "");
        assert_eq!(run("${UNSET:-}", &v).unwrap(), "");
        assert_eq!(run("${UNSET:-a b:c/d}", &v).unwrap(), "a b:c/d");
        // A default ends at the first brace, like compose 1.29.
        assert_eq!(run("${UNSET:-${SET}}", &v).unwrap(), "${SET}");
        let mut missing = Vec::new();
        interpolate("${UNSET:-d}", &v, &mut missing).unwrap();
        assert!(missing.is_empty(), "a default is no warning");
    }

    #[test]
    fn required() {
        let v = vars(&[("EMPTY", ""), ("SET", "v")]);
        assert_eq!(
            run("${UNSET:?give me UNSET}", &v),
            Err(InterpolationError::Required("give me UNSET".into()))
        );
        assert_eq!(
            run("${EMPTY:?err}", &v),
            Err(InterpolationError::Required("err".into()))
        );
        assert_eq!(run("${EMPTY?err}", &v).unwrap(), "");
        assert_eq!(
            run("${UNSET?}", &v),
            Err(InterpolationError::Required("UNSET".into()))
        );
        assert_eq!(run("${SET:?err}", &v).unwrap(), "v");
    }

    #[test]
    fn invalid() {
        let v = vars(&[]);
        for s in [
            "$", "a $ b", "${", "${A", "${}", "${1A}", "${A:x}", "$-", "${A B}",
        ] {
            assert_eq!(run(s, &v), Err(InterpolationError::Invalid), "{s}");
        }
    }

    #[test]
    fn env_file() {
        let text = "\u{feff}# comment\n\nA=1\nexport B = two \nC='lit $A'\nD=\"q\\n${A}\"\nE=x #c\nF=${A}${Z:-z}\nNOVALUE\nA=3\n";
        let got = parse_env_file(text, &HashMap::new(), true).unwrap();
        let want: Vec<(String, String)> = [
            ("A", "3"),
            ("B", "two"),
            ("C", "lit $A"),
            ("D", "q\n1"),
            ("E", "x"),
            ("F", "1z"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        let raw = parse_env_file("F=${A}", &HashMap::new(), false).unwrap();
        assert_eq!(raw[0].1, "${A}");
    }

    /// Each variable repeats the one before four times: without the caps, 40 lines would
    /// ask for 4^40 bytes. Refused at the first value over the cap, at once.
    #[test]
    fn an_exponential_env_file_is_refused_quickly() {
        let mut text = String::from("A0=xxxxxxxx\n");
        for i in 1..40 {
            let p = i - 1;
            text += &format!("A{i}=${{A{p}}}${{A{p}}}${{A{p}}}${{A{p}}}\n");
        }
        let started = std::time::Instant::now();
        let e = parse_env_file(&text, &HashMap::new(), true).unwrap_err();
        assert!(
            matches!(&e, EnvFileError::ValueTooLarge(k) if k == "A7"),
            "{e}"
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // Many values under the per-value cap still add up to the total cap.
        let big = "y".repeat(MAX_VALUE_BYTES);
        let many: String = (0..80).map(|i| format!("B{i}={big}\n")).collect();
        assert!(matches!(
            parse_env_file(&many, &HashMap::new(), true),
            Err(EnvFileError::TotalTooLarge(_))
        ));
        let v = vars(&[("A", &big)]);
        assert_eq!(run("$A$A", &v), Err(InterpolationError::TooLarge));
    }
}
