//! Benchmark of the App Pool and of template builds (run by `scripts/bench-pool`, never by
//! `cargo test`: it is a bench target). It prints figures and ratios; it does not
//! judge them.
//!
//! 1. Deployment: one bundle (a busybox app plus `GANTRY_BENCH_POOL_MIB` MiB of image data,
//!    default 256) to 3 servers (each a gantry and a dockerd in a namespace of its own),
//!    against the slowest of `curl -F app=@bundle.zip .../transfer/import` to each server
//!    alone in the same round, and against the three curl imports run at once (the servers
//!    share this machine's cores, so that is the floor of any concurrent deployment here);
//!    and the pool gantry's peak RSS during the deployment (VmHWM, reset before it).
//! 2. Template build (two services, one of them copying `GANTRY_BENCH_CONTEXT_MIB` MiB of
//!    context, default 64) over the SSE route against `docker build --no-cache` (classic
//!    builder) of the same contexts, each cold (the other's images removed first).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::bundle::{
    fresh_big_image, import, saved_image, template_images, upload_bundle, zip_of,
};
use common::fleet::{Fleet, Registry};
use common::{docker_cli, enc, test_image, unique, wait_for, Gantry};
use serde_json::json;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let host = common::docker_host().expect("run through scripts/bench-pool");
    let rounds = env_num("GANTRY_BENCH_ROUNDS", 2);
    bench_deploy(&host, rounds, env_num("GANTRY_BENCH_POOL_MIB", 256));
    bench_build(&host, rounds, env_num("GANTRY_BENCH_CONTEXT_MIB", 64));
}

fn bundle(name: &str, mib: usize) -> (String, Vec<u8>) {
    let (reference, tar) = saved_image("benchweb");
    let (_, filler) = fresh_big_image("benchfill", mib);
    let compose =
        format!("services:\n  web:\n    image: {reference}\n    command: [\"sleep\", \"600\"]\n");
    let config = format!("Name: {name}\nVersion: 1.0\n");
    let zip = zip_of(&[
        ("config.yml", config.as_bytes()),
        ("compose.yaml", compose.as_bytes()),
        ("docker/web.tar", &tar),
        ("docker/filler.tar", &filler),
    ]);
    (format!("{name}:1.0"), zip)
}

fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn curl_import(server: &common::fleet::Server, file: &std::path::Path) -> Duration {
    let start = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg("-F")
        .arg(format!("app=@{};type=application/zip", file.display()))
        .arg(format!("{}/api/1/transfer/import", server.url()))
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl import failed"
    );
    took
}

fn remove_everywhere(fleet: &Fleet, id: &str) {
    for s in &fleet.servers {
        s.gantry()
            .delete(&format!("/api/1/transfer/apps/{}?force=true", enc(id)))
            .expect_empty(200);
    }
}

fn bench_deploy(host: &str, rounds: usize, mib: usize) {
    let registry = Registry::start();
    let fleet = Fleet::start(3);
    let pool = Gantry::builder()
        .docker_host(host)
        .env("GANTRY_LOG_LEVEL", "info")
        .config(&format!(
            "[pool]\nregistry = \"http://{}\"\nnamespace = \"bench\"\nprobe_interval_secs = 1\ntoken_dir = {:?}",
            registry.addr,
            fleet.token_dir().display().to_string()
        ))
        .start();
    let (id, zip) = bundle(&unique("BenchApp"), mib);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &zip).unwrap();
    import(&pool, &zip).expect_json(200);
    pool.put(&format!("/api/1/pool/publish/{}", enc(&id)))
        .expect_json(200);
    pool.put(&format!("/api/1/pool/apps/{}", enc(&id)))
        .expect_json(200);
    let servers: Vec<String> = fleet
        .servers
        .iter()
        .map(|s| {
            let body = json!({"Server": s.url(), "TokenFile": s.token_file});
            let r = pool.send_json("POST", "/api/1/servers", &body);
            r.expect_json(201)["Id"].as_str().unwrap().to_string()
        })
        .collect();
    println!(
        "deploy: bundle {} MiB to {} servers, {rounds} rounds",
        zip.len() >> 20,
        servers.len()
    );
    for round in 1..=rounds {
        let slowest = fleet
            .servers
            .iter()
            .map(|s| curl_import(s, file.path()))
            .max()
            .unwrap();
        remove_everywhere(&fleet, &id);
        // The servers share this machine's cores: three imports at once are the floor of
        // any concurrent deployment here.
        let start = Instant::now();
        std::thread::scope(|scope| {
            for s in &fleet.servers {
                scope.spawn(|| curl_import(s, file.path()));
            }
        });
        let together = start.elapsed();
        remove_everywhere(&fleet, &id);
        std::fs::write(format!("/proc/{}/clear_refs", pool.pid()), "5").unwrap();
        let (took, ids) = deploy_all(&pool, &servers, &id);
        let peak = peak_rss_kib(pool.pid());
        println!(
            "round {round}: slowest single curl import {:.2} s, three curl imports at once {:.2} s, pool deployment to all {:.2} s, ratio {:.3} (to the three at once {:.3}), pool peak RSS {:.1} MiB",
            slowest.as_secs_f64(),
            together.as_secs_f64(),
            took.as_secs_f64(),
            took.as_secs_f64() / slowest.as_secs_f64(),
            took.as_secs_f64() / together.as_secs_f64(),
            peak as f64 / 1024.0
        );
        for d in ids {
            pool.delete(&format!("/api/1/deployments/{d}"))
                .expect_empty(200);
        }
    }
}

/// Deploys `id` to every server; the time until all imported it, and the deployments.
fn deploy_all(pool: &Gantry, servers: &[String], id: &str) -> (Duration, Vec<String>) {
    let start = Instant::now();
    let ids: Vec<String> = servers
        .iter()
        .map(|s| {
            let body = json!({"Server": s, "App": id});
            let r = pool.send_json("POST", "/api/1/deployments", &body);
            r.expect_json(202)["Id"].as_str().unwrap().to_string()
        })
        .collect();
    let done = wait_for(Duration::from_secs(600), Duration::from_millis(50), || {
        let list = pool.get("/api/1/deployments").json();
        let states: Vec<&str> = list
            .as_array()?
            .iter()
            .filter_map(|d| d["State"].as_str())
            .collect();
        assert!(!states.contains(&"Failed"), "{list}");
        (states.len() == ids.len() && states.iter().all(|s| *s == "Deployed")).then_some(())
    });
    assert!(done.is_some(), "the deployment did not finish");
    (start.elapsed(), ids)
}

fn template(name: &str, context_mib: usize) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let img = test_image();
    let mut data = vec![0u8; context_mib << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data)
        .unwrap();
    let big = format!("FROM {img}\nCOPY data.bin /data.bin\nRUN wc -c /data.bin > /size\n");
    let small = format!("FROM {img}\nARG GREETING=hi\nRUN echo \"$GREETING\" > /greeting\nCMD [\"cat\", \"/greeting\"]\n");
    let files = vec![
        ("big/Dockerfile".to_string(), big.into_bytes()),
        ("big/data.bin".to_string(), data),
        ("small/Dockerfile".to_string(), small.into_bytes()),
    ];
    let config = format!("Name: {name}\nVersion: 1.0-tpl\n");
    let build_file = "services:\n  big:\n    build: big\n  small:\n    build: small\n";
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("config.yml", config.as_bytes()),
        ("docker-compose-build.yml", build_file.as_bytes()),
    ];
    entries.extend(files.iter().map(|(n, d)| (n.as_str(), d.as_slice())));
    (zip_of(&entries), files)
}

fn docker_build(host: &str, dir: &std::path::Path, tag: &str) -> Duration {
    let start = Instant::now();
    let out = Command::new(docker_cli())
        .env("DOCKER_BUILDKIT", "0")
        .args(["-H", host, "build", "-q", "--no-cache", "-t", tag])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn bench_build(host: &str, rounds: usize, context_mib: usize) {
    let g = Gantry::builder()
        .docker_host(host)
        .env("GANTRY_LOG_LEVEL", "info")
        .start();
    let name = unique("benchtpl");
    let id = format!("{name}:1.0-tpl");
    let (zip, files) = template(&name, context_mib);
    let tpl = upload_bundle(&g, "/api/1/transfer/templates", &zip).expect_json(200);
    let images = template_images(&tpl);
    let dir = tempfile::tempdir().unwrap();
    for (n, d) in &files {
        let p = dir.path().join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    }
    let rmi = |refs: &[String]| {
        let _ = Command::new(docker_cli())
            .args(["-H", host, "rmi", "-f"])
            .args(refs)
            .output();
    };
    println!("template build: two services, {context_mib} MiB of context, {rounds} rounds");
    for round in 1..=rounds {
        let cli_tags = vec![format!("{name}-cli-big:1"), format!("{name}-cli-small:1")];
        let cli = docker_build(host, &dir.path().join("big"), &cli_tags[0])
            + docker_build(host, &dir.path().join("small"), &cli_tags[1]);
        rmi(&cli_tags);
        let start = Instant::now();
        let r = g.request(
            "GET",
            &format!("/api/1/transfer/templates/{}/build", enc(&id)),
            &[],
            None,
        );
        let took = start.elapsed();
        assert!(r.text().contains("Succeeded"), "{}", r.text());
        rmi(&images);
        println!(
            "round {round}: docker build {:.2} s, gantry SSE build {:.2} s, ratio {:.3}",
            cli.as_secs_f64(),
            took.as_secs_f64(),
            took.as_secs_f64() / cli.as_secs_f64()
        );
    }
}
