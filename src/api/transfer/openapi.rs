//! The OpenAPI 3.0 document of this dialect. Maintained by hand in `openapi.yaml` (YAML for
//! readability; served as JSON), kept in sync with the router by the tests below.

use std::sync::OnceLock;

use serde_json::{json, Value};

const SOURCE: &str = include_str!("openapi.yaml");

fn base() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        // The file is compiled in and parsed by the unit tests, so this cannot fail at run time.
        let mut doc: Value =
            serde_norway::from_str(SOURCE).expect("src/api/transfer/openapi.yaml is valid YAML");
        if !cfg!(feature = "pool") {
            drop_tagged(&mut doc, "pool");
        }
        doc
    })
}

/// Removes the paths whose operations carry `tag` (a build without that feature).
fn drop_tagged(doc: &mut Value, tag: &str) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    paths.retain(|_, item| {
        !item.as_object().is_some_and(|ops| {
            ops.values().any(|op| {
                op["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == tag))
            })
        })
    });
}

/// The document for `version` (already resolved, e.g. "1.0") on a listener with `prefix`.
pub fn document(version: &str, prefix: &str) -> Value {
    let mut doc = base().clone();
    doc["info"]["version"] = json!(version);
    doc["servers"] = json!([{ "url": format!("{prefix}/api/{version}") }]);
    doc
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::transfer::route_list;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

    fn documented() -> BTreeSet<(String, String)> {
        let doc = document("1.0", "");
        let paths = doc["paths"].as_object().expect("paths is an object");
        let mut set = BTreeSet::new();
        for (path, item) in paths {
            for key in item.as_object().expect("path item is an object").keys() {
                if METHODS.contains(&key.as_str()) {
                    set.insert((key.to_uppercase(), path.clone()));
                }
            }
        }
        set
    }

    /// The coverage test: the router and the document list the same (method, path) pairs.
    #[test]
    fn document_covers_exactly_the_routes() {
        let routes: BTreeSet<(String, String)> = route_list()
            .into_iter()
            .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
            .collect();
        let docs = documented();
        let undocumented: Vec<_> = routes.difference(&docs).collect();
        let not_served: Vec<_> = docs.difference(&routes).collect();
        assert!(
            undocumented.is_empty() && not_served.is_empty(),
            "src/api/transfer/openapi.yaml is out of sync with the router:\n  routes missing \
             from the document: {undocumented:?}\n  documented but not served: {not_served:?}"
        );
    }

    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        doc.pointer(pointer)
    }

    fn walk<'a>(v: &'a Value, refs: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    refs.push(r);
                }
                m.values().for_each(|x| walk(x, refs));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, refs)),
            _ => {}
        }
    }

    #[test]
    fn paths_of_a_feature_can_be_left_out() {
        let mut doc = json!({"paths": {
            "/a": {"get": {"tags": ["pool"]}},
            "/b": {"parameters": [], "get": {"tags": ["transfer"]}}
        }});
        drop_tagged(&mut doc, "pool");
        assert_eq!(doc["paths"].as_object().unwrap().len(), 1);
        assert!(doc["paths"]["/b"].is_object());
    }

    #[test]
    fn document_is_well_formed() {
        let doc = document("1.0", "/scaleit");
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["info"]["version"], "1.0");
        assert_eq!(doc["servers"][0]["url"], "/scaleit/api/1.0");
        // Every $ref points at something.
        let mut refs = Vec::new();
        walk(&doc, &mut refs);
        assert!(refs.len() > 50, "only {} refs", refs.len());
        for r in refs {
            assert!(resolve(&doc, r).is_some(), "dangling $ref {r}");
        }
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            // Path-level parameters plus the operation's.
            let shared: Vec<Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (method, op) in item.as_object().unwrap() {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let what = format!("{} {path}", method.to_uppercase());
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: no id"));
                assert!(ids.insert(id.to_string()), "{what}: duplicate id {id}");
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{what}: no responses");
                for (code, resp) in responses {
                    assert!(
                        code.len() == 3 && code.parse::<u16>().is_ok(),
                        "{what}: response code {code}"
                    );
                    let resp = match resp.get("$ref").and_then(Value::as_str) {
                        Some(r) => resolve(&doc, r).unwrap(),
                        None => resp,
                    };
                    assert!(
                        resp["description"].is_string(),
                        "{what} {code}: description"
                    );
                    // Errors are problem details; 204 and 304 have no body.
                    if code.starts_with('4') || code.starts_with('5') {
                        assert!(
                            resp["content"]["application/problem+json"].is_object(),
                            "{what} {code}: not application/problem+json"
                        );
                    }
                    if code == "204" || code == "304" {
                        assert!(resp.get("content").is_none(), "{what} {code}: has content");
                    }
                }
                // Every {name} in the path is a declared path parameter, and vice versa.
                let mut params = shared.clone();
                params.extend(op["parameters"].as_array().cloned().unwrap_or_default());
                let mut declared = BTreeSet::new();
                for p in &params {
                    let p = match p.get("$ref").and_then(Value::as_str) {
                        Some(r) => resolve(&doc, r).unwrap(),
                        None => p,
                    };
                    if p["in"] == "path" {
                        assert_eq!(p["required"], true, "{what}: path parameter not required");
                        declared.insert(p["name"].as_str().unwrap().to_string());
                    }
                }
                let in_path: BTreeSet<String> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .map(str::to_string)
                    .collect();
                assert_eq!(in_path, declared, "{what}: path parameters");
            }
        }
    }
}
