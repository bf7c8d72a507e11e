//! A minimal image registry on loopback (the pull side of the Docker Registry HTTP API v2:
//! `/v2/`, manifests, blobs), serving one image per repository from a `docker save` archive,
//! so that an update has a registry to pull a newer image from. dockerd treats 127.0.0.0/8
//! registries as insecure: it speaks plain HTTP to it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use flate2::write::GzEncoder;
use serde_json::{json, Value};

use crate::common::tar_entries;

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Default)]
struct Content {
    /// Repository name -> manifest JSON.
    manifests: HashMap<String, Vec<u8>>,
    /// `sha256:<hex>` -> blob.
    blobs: HashMap<String, Vec<u8>>,
}

pub struct Registry {
    pub addr: SocketAddr,
    content: Arc<Mutex<Content>>,
}

fn sha256(data: &[u8]) -> String {
    let out = crate::common::run_with_input("sha256sum", &["-"], Some(data));
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

impl Registry {
    pub fn start() -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let content: Arc<Mutex<Content>> = Arc::default();
        let shared = content.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let content = shared.clone();
                std::thread::spawn(move || serve(conn, &content));
            }
        });
        Registry { addr, content }
    }

    /// Serves the image of a `docker save` archive (one image) as `repo`'s only tag.
    pub fn publish(&self, repo: &str, saved: &[u8]) {
        let entries: HashMap<String, Vec<u8>> = tar_entries(saved).into_iter().collect();
        let manifest: Value = serde_json::from_slice(&entries["manifest.json"]).unwrap();
        let config = entries[manifest[0]["Config"].as_str().unwrap()].clone();
        let mut c = self.content.lock().unwrap();
        let mut layers = Vec::new();
        for layer in manifest[0]["Layers"].as_array().unwrap() {
            let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&entries[layer.as_str().unwrap()]).unwrap();
            let blob = gz.finish().unwrap();
            let digest = sha256(&blob);
            layers.push(json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": blob.len(),
                "digest": digest,
            }));
            c.blobs.insert(digest, blob);
        }
        let config_digest = sha256(&config);
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(),
                "digest": config_digest,
            },
            "layers": layers,
        });
        c.blobs.insert(config_digest, config);
        c.manifests
            .insert(repo.to_string(), serde_json::to_vec(&doc).unwrap());
    }
}

fn serve(conn: TcpStream, content: &Mutex<Content>) {
    let mut r = BufReader::new(conn);
    // dockerd tries TLS first: a ClientHello gets the connection closed, and it falls back to
    // plain HTTP at once.
    if r.fill_buf().map_or(true, |b| b.first() == Some(&0x16)) {
        return;
    }
    loop {
        let mut request = String::new();
        if r.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, kind, body) = answer(path, content);
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Docker-Distribution-API-Version: registry/2.0\r\n{}\r\n",
            body.len(),
            match path.contains("/manifests/") && status.starts_with("200") {
                true => format!("Docker-Content-Digest: {}\r\n", sha256(&body)),
                false => String::new(),
            }
        );
        let conn = r.get_mut();
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && conn.write_all(&body).is_err() {
            return;
        }
    }
}

/// Status line, content type and body for `GET path`.
fn answer(path: &str, content: &Mutex<Content>) -> (&'static str, &'static str, Vec<u8>) {
    let c = content.lock().unwrap();
    let not_found = ("404 Not Found", "application/json", b"{}".to_vec());
    if path == "/v2/" {
        return ("200 OK", "application/json", b"{}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found;
    };
    if let Some((repo, _)) = rest.split_once("/manifests/") {
        return match c.manifests.get(repo) {
            Some(m) => ("200 OK", MANIFEST_TYPE, m.clone()),
            None => not_found,
        };
    }
    if let Some((_, digest)) = rest.split_once("/blobs/") {
        return match c.blobs.get(digest) {
            Some(b) => ("200 OK", "application/octet-stream", b.clone()),
            None => not_found,
        };
    }
    not_found
}
