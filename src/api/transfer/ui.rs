//! The dashboard at `[prefix]/ui/`, on transfer listeners with `ui = true`: three static
//! files compiled into the binary (no CDN, no build step), served without authentication
//! (they hold no data; every call they make goes through the API and its auth). The page
//! asks for a token when the API answers 401.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::{Method, Request, StatusCode};

use crate::api::http::{self, Response};
use crate::server::Cx;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        bytes: include_str!("ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_str!("ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_str!("ui/style.css"),
    },
];

/// Scripts and styles only from the page's own origin, no framing by other sites.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// The answer to a dashboard request, or `None` when `req` is not one.
pub fn serve(req: &Request<Incoming>, cx: &Cx) -> Option<Response> {
    if !cx.listener.ui || !matches!(*req.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let local = super::strip_listener_prefix(req.uri().path(), &cx.listener.prefix)?;
    let rest = local.strip_prefix("/ui")?;
    if rest.is_empty() {
        let mut resp = http::empty(StatusCode::MOVED_PERMANENTLY);
        let to = format!("{}/ui/", cx.listener.prefix);
        resp.headers_mut()
            .insert(LOCATION, HeaderValue::from_str(&to).ok()?);
        return Some(resp);
    }
    let name = rest.strip_prefix('/')?;
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Some(super::not_found(req.uri().path()));
    };
    let body = if req.method() == Method::HEAD {
        http::empty_body()
    } else {
        http::full(asset.bytes)
    };
    let mut resp = http::with_type(StatusCode::OK, asset.content_type, body);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// The first load is every asset once: it must stay small (gateways on slow links).
    #[test]
    fn the_dashboard_stays_under_100_kib() {
        let total: usize = ASSETS.iter().map(|a| a.bytes.len()).sum();
        assert!(total < 100 * 1024, "{total} bytes");
    }

    /// No resource from another origin: the gateway may have no internet.
    #[test]
    fn the_dashboard_loads_nothing_from_elsewhere() {
        for a in &ASSETS {
            for bad in ["http://", "https://", "//cdn", "@import"] {
                assert!(!a.bytes.contains(bad), "{} contains {bad}", a.name);
            }
        }
    }
}
