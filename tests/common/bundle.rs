//! App bundles for the Transfer App's import: ZIPs, the image tarballs they carry, and their
//! multipart upload.

use std::io::{Read, Write};

use super::{docker_ok, docker_with_input, test_image, unique, Gantry, Resp};

/// The import route of the current API version.
pub const IMPORT: &str = "/api/1/transfer/import";

/// A ZIP with the given entries (names ending in `/` are directories).
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        if name.ends_with('/') {
            w.add_directory(*name, opts).unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// A bundle of `config.yml` (`Name: name`, `Version: version`) and `compose.yaml`.
pub fn app_zip(name: &str, version: &str, compose: &str) -> Vec<u8> {
    zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: {version}\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
    ])
}

/// A `multipart/form-data` body with `file` as `app.zip` in the field `field`: the content
/// type and the body.
pub fn multipart(field: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----gantrytestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"app.zip\"\r\nContent-Type: application/zip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// POSTs `zip` to the import route `path` (with its query, if any) as the field `app`.
pub fn upload_bundle(g: &Gantry, path: &str, zip: &[u8]) -> Resp {
    let (content_type, body) = multipart("app", zip);
    g.post(path, &content_type, body)
}

/// The image names of a template's services (its `GET /transfer/templates/{id}` answer).
pub fn template_images(template: &serde_json::Value) -> Vec<String> {
    let services = template["Services"]
        .as_array()
        .expect("a template's Services");
    services
        .iter()
        .map(|s| s["Image"].as_str().unwrap().to_string())
        .collect()
}

/// Imports `zip` through [`IMPORT`].
pub fn import(g: &Gantry, zip: &[u8]) -> Resp {
    upload_bundle(g, IMPORT, zip)
}

/// `docker save` of the test image under a new unique reference, which is then untagged, so
/// that importing a bundle with it really loads it.
pub fn saved_image(label: &str) -> (String, Vec<u8>) {
    let reference = format!("{}:1", unique(label));
    docker_ok(&["tag", &test_image(), &reference]);
    (reference.clone(), save_and_remove(&reference))
}

/// A new image (its own id, so a rollback really removes it) carrying `mib` MiB of random
/// bytes, saved and then removed, so that loading it takes a noticeable moment.
pub fn fresh_big_image(label: &str, mib: usize) -> (String, Vec<u8>) {
    let reference = format!("{}:1", unique(label));
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(dir.path().join("blob"), &data).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-C", dir.path().to_str().unwrap(), "-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let import = docker_with_input(&["import", "-", &reference], &tar.stdout);
    assert!(
        import.status.success(),
        "docker import failed: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    (reference.clone(), save_and_remove(&reference))
}

/// `docker save` of `reference`, which is then removed.
fn save_and_remove(reference: &str) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    docker_ok(&["save", "-o", file.path().to_str().unwrap(), reference]);
    docker_ok(&["rmi", reference]);
    std::fs::read(file.path()).unwrap()
}

/// Compose services `db` and `web` of the test image, both stopping at once on SIGTERM:
/// `web` waits for `db` to be healthy, which `db` is once `/ready` exists in it (checked every
/// second, `retries` times). `db` runs `db_first` (e.g. `"sleep 3; touch /ready; "`) before
/// it idles.
pub fn db_then_web_compose(db_first: &str, retries: u32) -> String {
    format!(
        "services:\n  db:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; {db_first}sleep 600 & wait\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"[ -f /ready ]\"]\n      interval: 1s\n      retries: {retries}\n    stop_grace_period: 1s\n  web:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    depends_on:\n      db:\n        condition: service_healthy\n    stop_grace_period: 1s\n",
        img = test_image()
    )
}

/// An app (`name`, version 1) of two services whose second waits for the first to become
/// healthy, which takes about 3 s: long enough to act while `start` runs.
pub fn slow_app(name: &str) -> Vec<u8> {
    app_zip(
        name,
        "1",
        &db_then_web_compose("sleep 3; touch /ready; ", 30),
    )
}
