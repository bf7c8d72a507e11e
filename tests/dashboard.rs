//! The dashboard at `[prefix]/ui/`: served only where enabled, without auth for its static
//! files (the API keeps its auth), small, and on its listener cross-origin requests are
//! refused. The browser test in scripts/test.sh drives it in Chromium.

mod common;

use common::Gantry;

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
fn requests_from_other_origins_are_refused_on_a_dashboard_listener() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path(), &[]).with_token(TOKEN);
    let path = "/api/1/devicename?name=evil";
    let r = g.request("PUT", path, &[("Origin", "http://evil.example")], None);
    r.expect_problem(403, "/api/1/devicename");
    let own = format!("http://{}", g.addr);
    let r = g.request(
        "PUT",
        "/api/1/devicename?name=gw-1",
        &[("Origin", &own)],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    // Clients that send no Origin (curl, scripts, the CLI) are not affected.
    g.get("/api/1/devicename").expect_json(200);
    // Nor are listeners without the dashboard.
    let plain = Gantry::builder().start();
    let r = plain.request(
        "GET",
        "/api/1/versions",
        &[("Origin", "http://evil.example")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
}
