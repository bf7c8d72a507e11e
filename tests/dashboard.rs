//! The dashboard at `[prefix]/ui/`: served only where enabled, without auth for its static
//! files (the API keeps its auth), small, under the Origin and Host rules every listener has,
//! on `token` and `tokens` listeners alike. The browser test in scripts/test.sh drives it in
//! Chromium.

mod common;

use common::{read_raw_response, write_all, Gantry};

const TOKEN: &str = "dashboard-token-0123456789abcdef";

fn token_gantry(dir: &std::path::Path, extra: &[&str]) -> Gantry {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut b = Gantry::builder()
        .listener("auth = \"token\"")
        .listener(&format!("token_file = \"{}\"", token.display()))
        .listener("ui = true");
    for l in extra {
        b = b.listener(l);
    }
    b.start()
}

#[test]
fn the_dashboard_is_served_without_auth_and_the_api_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path(), &[]);
    let mut total = 0;
    for (path, kind) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = g.get(path);
        assert_eq!(r.status, 200, "{path}: {r}");
        assert_eq!(r.content_type(), kind, "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        total += r.body.len();
    }
    // The first load, all of it, stays small.
    assert!(total < 100 * 1024, "{total} bytes");
    let index = g.get("/ui/").text();
    assert!(index.contains("<script src=\"app.js\""), "{index}");
    let r = g.get("/ui");
    assert_eq!(r.status, 301, "{r}");
    assert_eq!(r.header("location"), Some("/ui/"));
    g.get("/ui/nope.js").expect_problem(404, "/ui/nope.js");
    // The data stays behind the token.
    assert_eq!(g.get("/api/1/transfer/apps").status, 401);
    assert_eq!(g.get("/api/1/versions").status, 401);
    let g = g.with_token(TOKEN);
    g.get("/api/1/versions").expect_json(200);
}

#[test]
fn the_dashboard_lives_under_the_prefix_and_only_where_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path(), &["prefix = \"/gw\""]);
    assert_eq!(g.get("/gw/ui/").status, 200);
    assert_eq!(g.get("/gw/ui").header("location"), Some("/gw/ui/"));
    // Outside the prefix it is not the dashboard: the token is asked for, as everywhere.
    assert_eq!(g.get("/ui/").status, 401);
    let plain = Gantry::builder().start();
    plain.get("/ui/").expect_problem(404, "/ui/");
}

#[test]
fn the_dashboard_obeys_the_listeners_origin_and_host_rules() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path(), &["allowed_origins = [\"https://ops.example\"]"]);
    let g = g.with_token(TOKEN);
    let path = "/api/1/devicename?name=evil";
    let r = g.request("PUT", path, &[("Origin", "http://evil.example")], None);
    r.expect_problem(403, "/api/1/devicename");
    // The page itself is refused under a DNS-rebinding name, as the API is.
    let mut s = g.connect();
    let head = "GET /ui/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    write_all(&mut s, head.as_bytes()).unwrap();
    let (status, text) = read_raw_response(&mut s);
    assert_eq!(status, 403, "{text}");
    let own = format!("http://{}", g.addr);
    let r = g.request(
        "PUT",
        "/api/1/devicename?name=gw-1",
        &[("Origin", &own)],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    // An origin the listener names is served, with CORS.
    let r = g.request(
        "GET",
        "/api/1/devicename",
        &[("Origin", "https://ops.example")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ops.example")
    );
    // Clients that send no Origin (curl, scripts, the CLI) are not affected.
    g.get("/api/1/devicename").expect_json(200);
}

#[test]
fn the_dashboard_signs_in_with_any_named_token_of_a_tokens_listener() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let ops = "ops-0123456789abcdef-token";
    std::fs::write(&tokens, format!("admin {TOKEN}\nops {ops}\n")).unwrap();
    let g = Gantry::builder()
        .listener("auth = \"tokens\"")
        .listener(&format!("token_file = \"{}\"", tokens.display()))
        .listener("ui = true")
        .start();
    assert_eq!(g.get("/ui/").status, 200);
    assert_eq!(g.get("/api/1/versions").status, 401);
    for t in [TOKEN, ops] {
        let value = format!("Bearer {t}");
        let bearer = [("Authorization", value.as_str())];
        g.request("GET", "/api/1/versions", &bearer, None)
            .expect_json(200);
        // The header's versions come from the authenticated status route.
        let status = g
            .request("GET", "/gantry/status", &bearer, None)
            .expect_json(200);
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    }
}
