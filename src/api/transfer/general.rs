//! "General interfaces" (COMPAT-NOTES section 1): `GET /api/versions` and the OpenAPI
//! document at `[prefix]/apidoc/{version}/openapi.json`.

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{openapi, resolve_version, unsupported_version, version_key, Call, Handler};
use super::{Problem, Reply, VERSIONS};
use crate::api::http::{self, Response};
use crate::api::router::Routes;

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/versions", |c| Box::pin(versions(c)));
}

/// One supported version, newest first, with where it is served and documented.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ApiVersion {
    version: &'static str,
    base_path: String,
    api_doc: String,
}

async fn versions(c: Call) -> Reply {
    let mut list: Vec<&'static str> = VERSIONS.to_vec();
    list.sort_by_key(|v| std::cmp::Reverse(version_key(v)));
    let body: Vec<ApiVersion> = list
        .into_iter()
        .map(|v| ApiVersion {
            version: v,
            base_path: format!("{}/api/{v}", c.prefix),
            api_doc: format!("{}/apidoc/{v}/openapi.json", c.prefix),
        })
        .collect();
    Ok(http::json(StatusCode::OK, &body))
}

/// `[prefix]/apidoc/{rest}`; `rest` is `{version}/openapi.json`. `full` is the request path
/// (the problem's instance).
pub fn apidoc(method: &Method, rest: &str, prefix: &str, full: &str) -> Response {
    let Some((seg, file)) = rest.split_once('/') else {
        return super::not_found(full);
    };
    if file != "openapi.json" {
        return super::not_found(full);
    }
    let Some(version) = resolve_version(seg) else {
        return unsupported_version(seg).render(full);
    };
    if method != Method::GET {
        let mut resp = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{full} does not support this method; allowed: GET"),
        )
        .render(full);
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    http::json(StatusCode::OK, &openapi::document(version, prefix))
}
