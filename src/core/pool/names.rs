//! How app bundles are laid out in an OCI registry: one repository per app name under the
//! store's namespace, one tag per version, an OCI image manifest whose config is the app's
//! AppConfig (JSON) and whose one layer is the bundle ZIP, each with its own media type (as
//! Helm 3.8+ stores charts and Compose 2.34+ `docker compose publish` stores projects).

use crate::core::apps::AppId;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.gantry.app.v1";
/// The config blob: the app's AppConfig as JSON (PascalCase keys, as config.yml).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.gantry.app.config.v1+json";
/// The one layer: the app bundle ZIP, as `GET /transfer/export/{id}` writes it.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.gantry.app.bundle.v1+zip";
/// Manifest annotation with the app id (`{Name}:{Version}`), which names cannot carry.
pub const ID_ANNOTATION: &str = "io.gantry.app.id";

/// An app's repository name below the namespace: its Name lowercased, every run of
/// characters outside `[a-z0-9]` one `-` ("Simple Webserver" is `simple-webserver`).
pub fn repository(namespace: &str, name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "app" } else { slug };
    if namespace.is_empty() {
        slug.to_string()
    } else {
        format!("{namespace}/{slug}")
    }
}

/// A version as a tag: characters outside `[A-Za-z0-9_.-]` become `_`, a leading `.` or `-`
/// gets a `_` before it, at most 128 characters.
pub fn tag(version: &str) -> String {
    let mut t: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        t.insert(0, '_');
    }
    t.chars().take(128).collect()
}

/// Where an app lives in the store: (repository, tag).
pub fn location(namespace: &str, id_name: &str, version: &str) -> (String, String) {
    (repository(namespace, id_name), tag(version))
}

/// The sha256 digest of bytes, as OCI writes it.
pub fn sha256_digest(hex: &str) -> String {
    format!("sha256:{hex}")
}

/// Whether `id` is the id a manifest's annotation claims (`None`: no annotation).
pub fn id_matches(id: &AppId, annotation: Option<&String>) -> bool {
    annotation.is_none_or(|a| a == id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_are_valid_registry_names() {
        assert_eq!(
            repository("gantry/apps", "Simple Webserver"),
            "gantry/apps/simple-webserver"
        );
        assert_eq!(repository("", "--Über App!"), "ber-app");
        assert_eq!(repository("a", "!!!"), "a/app");
        assert_eq!(tag("1.0.0-dbg"), "1.0.0-dbg");
        assert_eq!(tag("1.0 beta+2"), "1.0_beta_2");
        assert_eq!(tag(".hidden"), "_.hidden");
        assert_eq!(tag(&"9".repeat(200)).len(), 128);
    }

    #[test]
    fn annotations_confirm_ids() {
        let id = AppId::from("web:1");
        assert!(id_matches(&id, None));
        assert!(id_matches(&id, Some(&"web:1".to_string())));
        assert!(!id_matches(&id, Some(&"Web:1".to_string())));
        assert_eq!(sha256_digest("ab"), "sha256:ab");
    }
}
