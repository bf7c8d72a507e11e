//! What a request must be to reach a listener at all, whatever the dialect: from an allowed
//! peer, for a `Host` that is an IP literal, `localhost` or a configured name (a DNS
//! rebinding page names its own host), and, from a browser, from the listener's own origin or
//! a configured one. Loopback is not authentication against a web page in the operator's
//! browser: without these, any page could drive the loopback API. Clients that send no
//! `Origin` (curl, python, the Intervirt client) are not affected.

use std::net::IpAddr;

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN, VARY,
};
use hyper::{Method, Request, StatusCode};

use crate::api::http::{self, Response};
use crate::config::Access;

/// What becomes of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Served; with `Access-Control-Allow-Origin` for a configured cross origin.
    Pass(Option<HeaderValue>),
    /// A CORS preflight from an allowed origin, answered here.
    Preflight(HeaderValue),
    /// Refused with 403 and why.
    Refuse(String),
}

/// Judges a request to a listener with `access`, reached over TLS or not, from `peer`;
/// `any_peer` skips the peer allow-list (for `/healthz`, which systemd's watchdog asks).
pub fn judge<B>(
    req: &Request<B>,
    access: &Access,
    tls: bool,
    peer: IpAddr,
    any_peer: bool,
) -> Verdict {
    let listed = access.peers.is_empty() || access.peers.iter().any(|c| c.contains(peer));
    if !listed && !any_peer {
        return Verdict::Refuse(format!("{peer} is not among this listener's allowed_peers"));
    }
    let host = request_host(req);
    if let Some(h) = &host {
        if !host_allowed(access, h) {
            return Verdict::Refuse(format!(
                "Host \"{h}\" is neither an IP address, localhost, nor in this listener's allowed_hosts"
            ));
        }
    }
    let headers = req.headers();
    let Some(origin) = headers.get(ORIGIN) else {
        // No Origin: not a browser, or a browser navigation; a cross-site one is refused.
        if header_is(headers, "sec-fetch-site", "cross-site") && !access.any_origin {
            return Verdict::Refuse("a cross-site request from a web page".into());
        }
        return Verdict::Pass(None);
    };
    let text = origin
        .to_str()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let scheme = if tls { "https" } else { "http" };
    let own = host.is_some_and(|_| {
        let authority = raw_host(req).unwrap_or_default().to_ascii_lowercase();
        text == format!("{scheme}://{authority}")
    });
    let configured = access.any_origin || access.origins.contains(&text);
    if !own && !configured {
        return Verdict::Refuse(format!(
            "Origin \"{text}\" is not this listener's own origin nor in its allowed_origins"
        ));
    }
    let allow = match (own, access.any_origin) {
        (true, _) => None,
        (false, true) => Some(HeaderValue::from_static("*")),
        (false, false) => Some(origin.clone()),
    };
    let preflight =
        req.method() == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    match (preflight, allow) {
        (true, allow) => Verdict::Preflight(allow.unwrap_or_else(|| origin.clone())),
        (false, allow) => Verdict::Pass(allow),
    }
}

fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(value))
}

/// The request's authority as sent (`host[:port]`).
fn raw_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
}

/// The request's host without its port, lowercase, without a trailing dot.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = raw_host(req)?.to_ascii_lowercase();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        raw.rsplit_once(':')
            .map_or(raw.as_str(), |(h, _)| h)
            .to_string()
    };
    Some(host.trim_end_matches('.').to_string())
}

fn host_allowed(access: &Access, host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || access.hosts.iter().any(|h| h == host)
}

/// The answer to an allowed CORS preflight.
pub fn preflight<B>(req: &Request<B>, allow: HeaderValue) -> Response {
    let mut resp = http::empty(StatusCode::NO_CONTENT);
    let h = resp.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    if let Some(asked) = req.headers().get(ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Adds `Access-Control-Allow-Origin` for an allowed cross origin.
pub fn allow_origin(resp: &mut Response, allow: Option<HeaderValue>) {
    if let Some(v) = allow {
        resp.headers_mut().insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
        resp.headers_mut()
            .insert(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn req(method: &str, host: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method(method)
            .uri("/api/1/x")
            .header("Host", host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn local() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    fn refused(v: Verdict) -> bool {
        matches!(v, Verdict::Refuse(_))
    }

    #[test]
    fn hosts() {
        let a = Access {
            hosts: vec!["gw.example".into()],
            ..Default::default()
        };
        for ok in [
            "127.0.0.1:54169",
            "[::1]:1",
            "localhost:9",
            "LOCALHOST",
            "gw.example",
            "gw.example.:80",
            "198.18.0.1",
        ] {
            assert_eq!(
                judge(&req("GET", ok, &[]), &a, false, local(), false),
                Verdict::Pass(None),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:54169",
            "127.0.0.1.evil.example",
            "localhost.evil.example:1",
        ] {
            assert!(
                refused(judge(&req("GET", bad, &[]), &a, false, local(), false)),
                "{bad}"
            );
        }
    }

    #[test]
    fn origins() {
        let none = Access::default();
        let host = "127.0.0.1:54169";
        let own = [("Origin", "http://127.0.0.1:54169")];
        assert_eq!(
            judge(&req("POST", host, &own), &none, false, local(), false),
            Verdict::Pass(None)
        );
        // Over TLS the own origin is https.
        assert!(refused(judge(
            &req("POST", host, &own),
            &none,
            true,
            local(),
            false
        )));
        for evil in ["http://evil.example", "null", "http://127.0.0.1:1"] {
            let r = req("POST", host, &[("Origin", evil)]);
            assert!(refused(judge(&r, &none, false, local(), false)), "{evil}");
        }
        let r = req("GET", host, &[("Sec-Fetch-Site", "cross-site")]);
        assert!(refused(judge(&r, &none, false, local(), false)));
        let ui = Access {
            origins: vec!["https://ui.example".into()],
            ..Default::default()
        };
        let r = req("PUT", host, &[("Origin", "https://ui.example")]);
        assert_eq!(
            judge(&r, &ui, false, local(), false),
            Verdict::Pass(Some(HeaderValue::from_static("https://ui.example")))
        );
        let pre = req(
            "OPTIONS",
            host,
            &[
                ("Origin", "https://ui.example"),
                ("Access-Control-Request-Method", "PUT"),
            ],
        );
        assert!(matches!(
            judge(&pre, &ui, false, local(), false),
            Verdict::Preflight(_)
        ));
        let pre = req(
            "OPTIONS",
            host,
            &[
                ("Origin", "http://evil.example"),
                ("Access-Control-Request-Method", "PUT"),
            ],
        );
        assert!(refused(judge(&pre, &ui, false, local(), false)));
        let any = Access {
            any_origin: true,
            ..Default::default()
        };
        let r = req("POST", host, &[("Origin", "http://anything.example")]);
        assert_eq!(
            judge(&r, &any, false, local(), false),
            Verdict::Pass(Some(HeaderValue::from_static("*")))
        );
    }

    #[test]
    fn peers() {
        let a = Access {
            peers: vec![Cidr::parse("10.0.2.2/32").unwrap()],
            ..Default::default()
        };
        let r = req("GET", "10.0.2.15:55436", &[]);
        assert_eq!(
            judge(&r, &a, false, "10.0.2.2".parse().unwrap(), false),
            Verdict::Pass(None)
        );
        assert!(refused(judge(
            &r,
            &a,
            false,
            "10.0.2.3".parse().unwrap(),
            false
        )));
    }
}
