//! The crash-point table, the code and the documentation agree.

use std::collections::BTreeSet;
use std::path::Path;

use super::points::{Crash, POINTS};

/// Every `crash_point("...")` / `crash_point_unsynced("...", ...)` /
/// `crash_when_sent("...", ...)` name in `src/`.
fn names_in_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("crash.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in ["crash_point(", "crash_point_unsynced(", "crash_when_sent("] {
                    for part in text.split(call).skip(1) {
                        // The name may be on the next line (rustfmt).
                        let Some(part) = part.trim_start().strip_prefix('"') else {
                            continue;
                        };
                        let name = part.split('"').next().unwrap();
                        // Names, not the examples of doc comments ("name", "...").
                        let real = name.starts_with(|c: char| c.is_ascii_lowercase())
                            && name.contains('.')
                            && name
                                .chars()
                                .all(|c| c.is_ascii_lowercase() || "0123456789.-".contains(c));
                        if real {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

#[test]
fn the_table_names_exactly_the_points_in_the_code() {
    let table: BTreeSet<String> = POINTS.iter().map(|p| p.name.to_string()).collect();
    let code = names_in_code();
    let missing: Vec<_> = code.difference(&table).collect();
    let unused: Vec<_> = table.difference(&code).collect();
    assert!(
        missing.is_empty(),
        "crash points not in points.rs: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "rows of points.rs no code reaches: {unused:?}"
    );
}

#[test]
fn rows_are_unique_and_well_formed() {
    let mut seen = BTreeSet::new();
    for p in POINTS {
        assert!(seen.insert((p.name, p.op, p.hit)), "duplicate row {p:?}");
        assert!(p.hit >= 1, "{p:?}");
        assert!(!p.name.contains('@') && !p.name.contains(' '), "{p:?}");
        if p.crash == Crash::Unsynced {
            assert!(p.name.ends_with(".unsynced"), "{p:?}");
        }
    }
}

#[test]
fn the_decisions_document_lists_every_point() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DECISIONS.md"))
            .unwrap();
    let section = doc
        .split("## Interrupted operations")
        .nth(1)
        .expect("docs/DECISIONS.md has no \"Interrupted operations\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let missing: Vec<_> = POINTS
        .iter()
        .filter(|p| !section.contains(&format!("`{}`", p.name)))
        .map(|p| p.name)
        .collect();
    assert!(
        missing.is_empty(),
        "crash points missing from DECISIONS.md: {missing:?}"
    );
}
