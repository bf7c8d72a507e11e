//! A route table: every (method, path pattern) a dialect serves, in one place, so that the
//! OpenAPI and auth tests can walk it.

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, StatusCode};
use percent_encoding::percent_decode_str;

use super::http::Response;

pub struct Routes<H> {
    router: matchit::Router<usize>,
    entries: Vec<(&'static str, Vec<(Method, H)>)>,
}

pub enum Lookup<'a, H> {
    Route {
        handler: &'a H,
        /// Captured segments, percent-decoded after matching (hyper leaves paths encoded, so an
        /// encoded `/` stays inside its segment).
        params: Vec<(String, String)>,
    },
    NotFound,
    MethodNotAllowed(Vec<Method>),
}

impl<H> Default for Routes<H> {
    fn default() -> Self {
        Self {
            router: matchit::Router::new(),
            entries: Vec::new(),
        }
    }
}

impl<H> Routes<H> {
    /// Adds a route. Conflicting patterns are a programming error and panic at start-up.
    pub fn add(&mut self, method: Method, pattern: &'static str, handler: H) -> &mut Self {
        if let Some(i) = self.entries.iter().position(|(p, _)| *p == pattern) {
            let methods = &mut self.entries[i].1;
            assert!(
                !methods.iter().any(|(m, _)| *m == method),
                "duplicate route {method} {pattern}"
            );
            methods.push((method, handler));
        } else {
            self.router
                .insert(pattern, self.entries.len())
                .unwrap_or_else(|e| panic!("route {pattern}: {e}"));
            self.entries.push((pattern, vec![(method, handler)]));
        }
        self
    }

    pub fn find(&self, method: &Method, path: &str) -> Lookup<'_, H> {
        let Ok(m) = self.router.at(path) else {
            return Lookup::NotFound;
        };
        let methods = &self.entries[*m.value].1;
        match methods.iter().find(|(mm, _)| mm == method) {
            Some((_, handler)) => Lookup::Route {
                handler,
                params: m
                    .params
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            percent_decode_str(v).decode_utf8_lossy().into_owned(),
                        )
                    })
                    .collect(),
            },
            None => Lookup::MethodNotAllowed(methods.iter().map(|(m, _)| m.clone()).collect()),
        }
    }

    /// Every (method, pattern) pair, in registration order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&Method, &'static str)> {
        self.entries
            .iter()
            .flat_map(|(p, ms)| ms.iter().map(move |(m, _)| (m, *p)))
    }
}

impl<H> Lookup<'_, H> {
    /// The answer to a lookup that found no handler: 404, or 405 with `Allow`, rendered by
    /// the dialect's `error` (status, message). None when a handler was found.
    pub fn unrouted(
        &self,
        path: &str,
        error: impl FnOnce(StatusCode, String) -> Response,
    ) -> Option<Response> {
        match self {
            Lookup::Route { .. } => None,
            Lookup::NotFound => Some(error(StatusCode::NOT_FOUND, format!("no route for {path}"))),
            Lookup::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut resp = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{path} does not support this method; allowed: {allow}"),
                );
                if let Ok(v) = HeaderValue::from_str(&allow) {
                    resp.headers_mut().insert(ALLOW, v);
                }
                Some(resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_decodes_and_reports_methods() {
        let mut r = Routes::default();
        r.add(Method::GET, "/images/{id}", 1)
            .add(Method::DELETE, "/images/{id}", 2)
            .add(Method::GET, "/images/{id}/export", 3);
        match r.find(&Method::DELETE, "/images/a%2Fb%3Alatest") {
            Lookup::Route { handler, params } => {
                assert_eq!(*handler, 2);
                assert_eq!(params, vec![("id".to_string(), "a/b:latest".to_string())]);
            }
            _ => panic!("no route"),
        }
        assert!(matches!(
            r.find(&Method::GET, "/images/x/export"),
            Lookup::Route { handler: 3, .. }
        ));
        match r.find(&Method::PUT, "/images/x") {
            Lookup::MethodNotAllowed(ms) => assert_eq!(ms, vec![Method::GET, Method::DELETE]),
            _ => panic!("expected 405"),
        }
        assert!(matches!(r.find(&Method::GET, "/nope"), Lookup::NotFound));
        assert_eq!(r.iter().count(), 3);
    }
}
