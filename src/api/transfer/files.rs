//! "Transfer Technology - Files API": an app's stored bundle as a file tree, and downloads
//! of its files. The path logic is the core's (`core::apps::files`); this maps the wire:
//! ids URL-encoded as the spec's examples show, PascalCase nodes, problems for errors.

use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Serialize;
use tokio_util::io::ReaderStream;

use super::{Call, Handler, Problem, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::apps::files::{FileLookup, FileNode};
use crate::core::ErrorKind;

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/files", |c| Box::pin(roots(c)))
        .add(Method::GET, "/files/{id}", |c| Box::pin(file(c)));
}

/// What JavaScript's `encodeURIComponent` leaves alone, as in the spec's ids
/// (`example%20app%3A1.0%2F%2FResources%2Ftutorial.mp4`).
const ID: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn encode(id: &str) -> String {
    utf8_percent_encode(id, ID).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DirJson {
    name: String,
    id: String,
    deletable: bool,
    extendable: bool,
    accept: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<NodeJson>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct FileJson {
    name: String,
    id: String,
    deletable: bool,
    editable: bool,
    #[serde(rename = "MIMEType")]
    mime_type: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum NodeJson {
    Dir(DirJson),
    File(FileJson),
}

/// Nothing is deletable, editable or extendable: the bundle is what was imported.
fn node(n: FileNode) -> NodeJson {
    match n {
        FileNode::Dir { name, id, entries } => NodeJson::Dir(DirJson {
            name,
            id: encode(&id),
            deletable: false,
            extendable: false,
            accept: None,
            entries: Some(entries.into_iter().map(node).collect()),
        }),
        FileNode::File { name, id, mime, .. } => NodeJson::File(FileJson {
            name,
            id: encode(&id),
            deletable: false,
            editable: false,
            mime_type: mime,
        }),
    }
}

/// `GET /files?category=instances|templates`: one directory node per app or template
/// (without entries). Empty is 204.
async fn roots(c: Call) -> Reply {
    let ids = match c.query.get("category") {
        Some("instances") => c.core.apps.instance_ids()?,
        Some("templates") => c.core.templates()?.ids()?,
        Some(other) => return Err(bad_category(other)),
        None => {
            return Err(Problem::bad_request(
                "query parameter 'category' (\"instances\" or \"templates\") not given",
            ))
        }
    };
    if ids.is_empty() {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    }
    let body: Vec<DirJson> = ids
        .into_iter()
        .map(|id| DirJson {
            id: encode(id.as_str()),
            name: id.to_string(),
            deletable: false,
            extendable: false,
            accept: None,
            entries: None,
        })
        .collect();
    Ok(http::json(StatusCode::OK, &body))
}

/// `GET /files/{id}`: `{appid}` or `{appid}//{dir}` lists (recursively), `{appid}//{file}`
/// downloads with the MIME type of its extension. `?category=templates` looks among the
/// templates, `instances` among the apps; without it an app is looked for first, then a
/// template.
async fn file(c: Call) -> Reply {
    let id = c.param("id");
    if id.is_empty() {
        return Err(Problem::bad_request("file id not given"));
    }
    let found = match c.query.get("category") {
        Some("templates") => c.core.templates()?.file(id).await,
        Some("instances") => c.core.apps.file(id).await,
        None => match c.core.apps.file(id).await {
            Err(e) if e.is(ErrorKind::NotFound) => match c.core.templates() {
                Ok(t) => t.file(id).await.map_err(|_| e),
                Err(_) => Err(e),
            },
            other => other,
        },
        Some(other) => return Err(bad_category(other)),
    };
    match found? {
        FileLookup::Dir(nodes) => {
            let body: Vec<NodeJson> = nodes.into_iter().map(node).collect();
            Ok(http::json(StatusCode::OK, &body))
        }
        FileLookup::File { file, mime, size } => {
            let stream = ReaderStream::new(tokio::fs::File::from_std(file));
            let mut resp =
                http::with_type(StatusCode::OK, mime, http::stream_body(Box::pin(stream)));
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(size));
            Ok(resp)
        }
    }
}

fn bad_category(other: &str) -> Problem {
    Problem::bad_request(format!(
        "query parameter 'category' must be \"instances\" or \"templates\", not \"{other}\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_the_spec_shows() {
        assert_eq!(encode("example app:1.0"), "example%20app%3A1.0");
        assert_eq!(encode("web server:1.0-php"), "web%20server%3A1.0-php");
        assert_eq!(
            encode("example app:1.0//Resources/tutorial.mp4"),
            "example%20app%3A1.0%2F%2FResources%2Ftutorial.mp4"
        );
    }
}
