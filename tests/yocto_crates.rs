//! The Yocto recipe's crate list must match Cargo.lock.
//!
//! Yocto builds gantry offline with `cargo --frozen` from the `crate://` URLs in
//! `yocto/meta-gantry/recipes-core/gantry/gantry-crates.inc`, so a crate added to
//! Cargo.lock but not to the .inc breaks the image build far from its cause.
//! Regenerate with `scripts/gen-crates-inc`.

use std::collections::BTreeMap;
use std::path::Path;

const INC: &str = "yocto/meta-gantry/recipes-core/gantry/gantry-crates.inc";
const CRATES_IO: [&str; 2] = [
    "registry+https://github.com/rust-lang/crates.io-index",
    "sparse+https://index.crates.io/",
];
const HINT: &str = "run scripts/gen-crates-inc to regenerate it";

type Locked = BTreeMap<String, (String, String, String)>;

/// crates.io packages of a Cargo.lock, keyed "name-version" (the .inc's checksum
/// key), valued (name, version, sha256).
fn locked_crates(text: &str) -> Locked {
    let lock: toml::Table = text.parse().expect("parse Cargo.lock");
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .expect("Cargo.lock has [[package]] entries");

    let mut out = BTreeMap::new();
    for p in packages {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let name = field("name").expect("package name");
        let version = field("version").expect("package version");
        let Some(source) = field("source") else {
            continue; // the gantry package itself
        };
        assert!(
            CRATES_IO.contains(&source.as_str()),
            "{name} {version} comes from {source}: Yocto's crate fetcher only takes crates.io"
        );
        let checksum = field("checksum").unwrap_or_else(|| panic!("{name} {version}: no checksum"));
        let dup = out.insert(format!("{name}-{version}"), (name, version, checksum));
        assert!(dup.is_none(), "duplicate package in Cargo.lock");
    }
    assert!(!out.is_empty(), "no crates.io packages in Cargo.lock");
    out
}

struct Inc {
    /// "name/version" of each `crate://crates.io/name/version` entry, in order.
    urls: Vec<String>,
    /// (key, sha256) of each `SRC_URI[key.sha256sum] = "..."` line.
    checksums: Vec<(String, String)>,
}

fn parse_inc(text: &str) -> Inc {
    let mut inc = Inc {
        urls: Vec::new(),
        checksums: Vec::new(),
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("crate://") {
            let url = rest.trim_end_matches('\\').trim();
            let path = url
                .strip_prefix("crates.io/")
                .unwrap_or_else(|| panic!("{INC}:{}: not a crates.io URL: {raw}", n + 1));
            assert!(
                !path.contains(';'),
                "{INC}:{}: unexpected URL parameters: {raw}",
                n + 1
            );
            inc.urls.push(path.to_owned());
        } else if let Some(rest) = line.strip_prefix("SRC_URI[") {
            let (key, value) = rest
                .split_once(".sha256sum] = ")
                .unwrap_or_else(|| panic!("{INC}:{}: unexpected SRC_URI flag: {raw}", n + 1));
            let sum = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{INC}:{}: unquoted checksum: {raw}", n + 1));
            inc.checksums.push((key.to_owned(), sum.to_owned()));
        } else {
            assert!(
                line.is_empty()
                    || line.starts_with('#')
                    || line == "SRC_URI += \" \\"
                    || line == "\"",
                "{INC}:{}: unexpected line: {raw}",
                n + 1
            );
        }
    }
    inc
}

/// Every way the .inc differs from the lock, one line each.
fn differences(locked: &Locked, inc: &Inc) -> Vec<String> {
    let mut problems = Vec::new();

    // Every locked crate: one URL and one checksum line, with the locked checksum.
    for (key, (name, version, checksum)) in locked {
        let url = format!("{name}/{version}");
        match inc.urls.iter().filter(|u| **u == url).count() {
            1 => {}
            0 => problems.push(format!("missing crate://crates.io/{url}")),
            k => problems.push(format!("crate://crates.io/{url} listed {k} times")),
        }
        let sums: Vec<&str> = inc
            .checksums
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, s)| s.as_str())
            .collect();
        match sums.as_slice() {
            [s] if s == checksum => {}
            [s] => problems.push(format!("{key}: checksum {s}, Cargo.lock has {checksum}")),
            [] => problems.push(format!("missing SRC_URI[{key}.sha256sum]")),
            _ => problems.push(format!("SRC_URI[{key}.sha256sum] set {} times", sums.len())),
        }
    }

    // Nothing else: no crate that Cargo.lock no longer has.
    let locked_urls: Vec<String> = locked
        .values()
        .map(|(n, v, _)| format!("{n}/{v}"))
        .collect();
    for url in &inc.urls {
        if !locked_urls.contains(url) {
            problems.push(format!("crate://crates.io/{url} is not in Cargo.lock"));
        }
    }
    for (key, _) in &inc.checksums {
        if !locked.contains_key(key) {
            problems.push(format!("SRC_URI[{key}.sha256sum] is not in Cargo.lock"));
        }
    }

    problems
}

#[test]
fn yocto_crate_list_matches_cargo_lock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("read Cargo.lock");
    let text =
        std::fs::read_to_string(root.join(INC)).unwrap_or_else(|e| panic!("{INC}: {e}; {HINT}"));
    let problems = differences(&locked_crates(&lock), &parse_inc(&text));
    assert!(
        problems.is_empty(),
        "{INC} does not match Cargo.lock ({HINT}):\n  {}",
        problems.join("\n  ")
    );
}

const SAMPLE_LOCK: &str = r#"
version = 4

[[package]]
name = "gantry"
version = "0.1.0"

[[package]]
name = "a"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"
"#;

const SAMPLE_INC: &str = "# Autogenerated with 'bitbake -c update_crates gantry'

# from Cargo.lock
SRC_URI += \" \\
    crate://crates.io/a/1.0.0 \\
\"

SRC_URI[a-1.0.0.sha256sum] = \"aa\"
";

#[test]
fn matching_sample_has_no_differences() {
    let problems = differences(&locked_crates(SAMPLE_LOCK), &parse_inc(SAMPLE_INC));
    assert!(problems.is_empty(), "{problems:?}");
}

/// The point of the check: a crate added to Cargo.lock but not to the .inc.
#[test]
fn crate_missing_from_the_inc_is_reported() {
    let lock = format!(
        "{SAMPLE_LOCK}\n[[package]]\nname = \"b-c\"\nversion = \"2.0.0\"\n\
         source = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"bb\"\n"
    );
    let problems = differences(&locked_crates(&lock), &parse_inc(SAMPLE_INC));
    assert_eq!(
        problems,
        [
            "missing crate://crates.io/b-c/2.0.0",
            "missing SRC_URI[b-c-2.0.0.sha256sum]"
        ]
    );
}

#[test]
fn stale_and_wrong_entries_are_reported() {
    let inc = SAMPLE_INC.replace("\"aa\"", "\"ff\"").replace(
        "    crate://crates.io/a/1.0.0 \\\n",
        "    crate://crates.io/a/1.0.0 \\\n    crate://crates.io/old/0.1.0 \\\n",
    );
    let problems = differences(&locked_crates(SAMPLE_LOCK), &parse_inc(&inc));
    assert_eq!(
        problems,
        [
            "a-1.0.0: checksum ff, Cargo.lock has aa",
            "crate://crates.io/old/0.1.0 is not in Cargo.lock"
        ]
    );
}

#[test]
#[should_panic(expected = "only takes crates.io")]
fn git_dependencies_are_refused() {
    let lock = SAMPLE_LOCK.replace(
        "registry+https://github.com/rust-lang/crates.io-index",
        "git+https://example.com/a.git?rev=1#1",
    );
    locked_crates(&lock);
}
