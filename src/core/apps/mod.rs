//! Apps: bundles (app ZIPs) and the store of imported apps, plus the types they share.
//!
//! See docs/DESIGN-apps.md. Everything here is blocking file I/O: async callers wrap it in
//! `spawn_blocking`.

pub mod bundle;
pub mod console;
pub mod files;
pub mod import;
pub mod lifecycle;
pub mod maintain;
pub mod recognize;
pub mod recover;
pub mod snapshots;
pub mod store;
pub mod stream;
pub mod update;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

/// An app's `config.yml`, and the `App` object of the API (same PascalCase keys).
///
/// Unknown keys are ignored: bundles made for other servers may carry more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppConfig {
    #[serde(default)]
    pub manufacturer_id: Option<String>,
    #[serde(default)]
    pub product_number: Option<String>,
    /// Required; a missing key reads as "" so the bundle check can say what is missing.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The spec's example says `Frontend`, the reference config.yml `Frontends`: accept both.
    #[serde(default, alias = "Frontend")]
    pub frontends: Option<Vec<ConnectionPoint>>,
    #[serde(default, alias = "Middlelayer")]
    pub middlelayers: Option<Vec<ConnectionPoint>>,
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    #[serde(default)]
    pub installed: Option<String>,
}

impl AppConfig {
    pub fn id(&self) -> AppId {
        AppId::new(&self.name, &self.version)
    }
}

/// Where a frontend or middlelayer of an app answers: `<protocol>://<host>:<port><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionPoint {
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// An app's id, `{Name}:{Version}`. Opaque to clients; never parsed back into its parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppId(String);

impl AppId {
    pub fn new(name: &str, version: &str) -> Self {
        AppId(format!("{name}:{version}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The compose project name (see [`crate::core::compose::project_slug`]; may be empty,
    /// and a bundle whose id slugs to nothing is refused).
    pub fn slug(&self) -> String {
        crate::core::compose::project_slug(&self.0)
    }

    /// The store's directory name: the id percent-encoded (`NON_ALPHANUMERIC`), so it can
    /// hold no `/`, no `.` and nothing a shell or filesystem treats specially.
    pub fn dir_name(&self) -> String {
        utf8_percent_encode(&self.0, NON_ALPHANUMERIC).to_string()
    }
}

impl From<&str> for AppId {
    fn from(s: &str) -> Self {
        AppId(s.to_string())
    }
}

impl From<String> for AppId {
    fn from(s: String) -> Self {
        AppId(s)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which apps (or templates) have an operation in flight, and which operation.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashMap<AppId, &'static str>>);

/// Marks an id (an app's, a template's) busy in its [`Claims`] until dropped.
pub struct ClaimGuard<'a> {
    claims: &'a Claims,
    id: AppId,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        self.claims.map().remove(&self.id);
    }
}

impl Claims {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<AppId, &'static str>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `id` for the operation `what`; while another one runs, `Err` names that one.
    pub fn claim(&self, id: &AppId, what: &'static str) -> Result<ClaimGuard<'_>, &'static str> {
        let mut map = self.map();
        if let Some(other) = map.get(id) {
            return Err(other);
        }
        map.insert(id.clone(), what);
        Ok(ClaimGuard {
            claims: self,
            id: id.clone(),
        })
    }

    pub fn is_busy(&self, id: &AppId) -> bool {
        self.map().contains_key(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_slug() {
        let id = AppId::new("Simple Webserver", "1.0.0-tpl");
        assert_eq!(id.as_str(), "Simple Webserver:1.0.0-tpl");
        assert_eq!(id.to_string(), "Simple Webserver:1.0.0-tpl");
        assert_eq!(id.slug(), "simplewebserver100-tpl");
        assert_eq!(AppId::from("My_App:2").slug(), "my_app2");
        assert_eq!(AppId::from("--Über:1").slug(), "ber1");
        assert_eq!(AppId::from("ÄÖ:.").slug(), "");
    }

    #[test]
    fn dir_name_is_percent_encoded() {
        let id = AppId::new("simple webserver", "1.0.0");
        assert_eq!(id.dir_name(), "simple%20webserver%3A1%2E0%2E0");
        assert_eq!(AppId::from("../x:/").dir_name(), "%2E%2E%2Fx%3A%2F");
    }

    #[test]
    fn config_accepts_both_spellings() {
        let yaml = "
Name: web
Version: 1.10
Frontend:
 - Port: 54180
   Path: null
   Protocol: http
Middlelayers:
 - Port: 54179
Extra: ignored
";
        let c: AppConfig = serde_norway::from_str(yaml).unwrap();
        // A YAML number stays as written: 1.10 must not become 1.1.
        assert_eq!(c.id().as_str(), "web:1.10");
        let f = c.frontends.unwrap();
        assert_eq!(f[0].port, 54180);
        assert_eq!(f[0].path, None);
        assert_eq!(f[0].protocol.as_deref(), Some("http"));
        assert_eq!(c.middlelayers.unwrap()[0].port, 54179);
    }

    #[test]
    fn config_json_is_pascal_case() {
        let c = AppConfig {
            name: "web".into(),
            version: "1".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["Name"], "web");
        assert_eq!(json["Version"], "1");
        let back: AppConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }
}
