//! `gantry app ...`: the apps of the transfer API.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use super::client::{body_bytes, json_of, CliResult, Client};
use super::operation::{self, Upload};
use super::output::{self, json, parse, print, say, table};
use super::progress::Progress;
use super::{Exit, Opts};

#[derive(Subcommand, Debug)]
pub enum AppCmd {
    /// List the apps with their status
    #[command(visible_alias = "list")]
    Ls,
    /// Show one app: its config, containers and images
    Show { id: String },
    /// Import an app bundle (a ZIP); images stream into Docker while it uploads
    Import {
        file: PathBuf,
        /// Replace an app with the same id
        #[arg(long)]
        replace: bool,
    },
    /// Export an app as a ZIP bundle
    Export {
        id: String,
        file: PathBuf,
        /// Include the images the bundle brought (docker save)
        #[arg(long)]
        images: bool,
    },
    /// Start an app (compose up)
    Start { id: String },
    /// Stop an app (compose down)
    Stop {
        id: String,
        /// Also remove the app's images (unless other apps use them)
        #[arg(long)]
        remove_images: bool,
        /// Also remove the app's volumes
        #[arg(long)]
        remove_volumes: bool,
    },
    /// Print an app's container logs
    Logs {
        id: String,
        /// Keep printing new lines as they come
        #[arg(long, short)]
        follow: bool,
        /// Lines per container from the end (all: -1)
        #[arg(
            long,
            short = 'n',
            default_value_t = 100,
            allow_negative_numbers = true
        )]
        tail: i64,
    },
    /// Remove an app (its images too, unless other apps use them)
    #[command(visible_alias = "remove")]
    Rm {
        id: String,
        /// Keep the images the bundle brought
        #[arg(long)]
        keep_images: bool,
        /// Also remove the app's volumes
        #[arg(long)]
        volumes: bool,
        /// Remove it even while it runs
        #[arg(long, short)]
        force: bool,
    },
}

pub async fn run(cmd: AppCmd, opts: &Opts) -> CliResult<Exit> {
    let client = Client::new(opts).await?;
    match cmd {
        AppCmd::Ls => list(&client, opts).await,
        AppCmd::Show { id } => show(&client, opts, &id).await,
        AppCmd::Import { file, replace } => import(&client, opts, &file, replace).await,
        AppCmd::Export { id, file, images } => export(&client, opts, &id, &file, images).await,
        AppCmd::Start { id } => lifecycle(&client, opts, &id, "start", "").await,
        AppCmd::Stop {
            id,
            remove_images,
            remove_volumes,
        } => {
            let q = format!("?remove_images={remove_images}&remove_volumes={remove_volumes}");
            lifecycle(&client, opts, &id, "stop", &q).await
        }
        AppCmd::Logs { id, follow, tail } => {
            super::logs::run(&client, opts, &id, follow, tail).await
        }
        AppCmd::Rm {
            id,
            keep_images,
            volumes,
            force,
        } => {
            let images = !keep_images;
            let q = format!("?remove_images={images}&remove_volumes={volumes}&force={force}");
            remove(&client, opts, &id, &q).await
        }
    }
}

/// An app id as one path segment.
pub fn seg(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The parts of an AppInstance the tables show.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct App {
    id: String,
    app: AppConfig,
    busy: bool,
    status: String,
    containers: Vec<Container>,
    images: Vec<Image>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct AppConfig {
    name: String,
    version: String,
    description: Option<String>,
    imported: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Container {
    name: String,
    image_name: String,
    status: String,
    running: bool,
    port_mappings: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Image {
    name: String,
    id: Option<String>,
    size: Option<u64>,
}

async fn list(client: &Client, opts: &Opts) -> CliResult<Exit> {
    let Some(apps) = output::list(client, &client.api("/transfer/apps"), opts).await? else {
        return Ok(Exit::Ok);
    };
    let apps: Vec<App> = parse(&apps)?;
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| {
            let running = a.containers.iter().filter(|c| c.running).count();
            let status = if a.busy {
                format!("{} (busy)", a.status)
            } else {
                a.status.clone()
            };
            vec![
                a.id.clone(),
                status,
                format!("{running}/{}", a.containers.len()),
                a.app.imported.clone(),
            ]
        })
        .collect();
    print(&table(&["ID", "STATUS", "RUNNING", "IMPORTED"], &rows))?;
    Ok(Exit::Ok)
}

async fn show(client: &Client, opts: &Opts, id: &str) -> CliResult<Exit> {
    let path = client.api(&format!("/transfer/apps/{}", seg(id)));
    let value: Value = client.get_json(&path).await?.unwrap_or(Value::Null);
    if opts.json {
        json(&value)?;
        return Ok(Exit::Ok);
    }
    print(&describe(&parse(&value)?))?;
    Ok(Exit::Ok)
}

fn describe(a: &App) -> String {
    let mut out = format!(
        "Id:          {}\nName:        {}\nVersion:     {}\nStatus:      {}{}\nImported:    {}\n",
        a.id,
        a.app.name,
        a.app.version,
        a.status,
        if a.busy { " (busy)" } else { "" },
        a.app.imported
    );
    if let Some(d) = a.app.description.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(&format!("Description: {d}\n"));
    }
    let row = |c: &Container| {
        let ports = c.port_mappings.join(", ");
        vec![
            c.name.clone(),
            c.image_name.clone(),
            c.status.clone(),
            ports,
        ]
    };
    let containers: Vec<Vec<String>> = a.containers.iter().map(row).collect();
    out.push_str("\nContainers:\n");
    out.push_str(&indent(&table(
        &["NAME", "IMAGE", "STATUS", "PORTS"],
        &containers,
    )));
    let row = |i: &Image| {
        let size = i.size.map(super::progress::size).unwrap_or_default();
        vec![
            i.name.clone(),
            short_id(i.id.as_deref().unwrap_or("")),
            size,
        ]
    };
    let images: Vec<Vec<String>> = a.images.iter().map(row).collect();
    out.push_str("\nImages:\n");
    out.push_str(&indent(&table(&["NAME", "ID", "SIZE"], &images)));
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `sha256:0123456789ab...` as Docker's short id.
pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

async fn import(client: &Client, opts: &Opts, file: &Path, replace: bool) -> CliResult<Exit> {
    let upload = Upload::multipart(file, "app").await?;
    let mut progress = Progress::new("import", Some(upload.length), opts.quiet || opts.json);
    let path = client.api(&format!("/transfer/import?replace={replace}"));
    let resp = operation::run(client, Method::POST, &path, Some(upload), &mut progress).await?;
    let value: Value = json_of(resp).await?.unwrap_or(Value::Null);
    if opts.json {
        json(&value)?;
    } else {
        let app: App = parse(&value)?;
        print(&format!("imported {} ({})\n", app.id, app.status))?;
    }
    Ok(Exit::Ok)
}

/// The output of a start or stop (a ProcessResult).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ProcessResult {
    exit_code: i32,
    lines: Vec<ProcessLine>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ProcessLine {
    line: String,
}

async fn lifecycle(
    client: &Client,
    opts: &Opts,
    id: &str,
    action: &str,
    query: &str,
) -> CliResult<Exit> {
    // The output comes whole at the end: off a terminal, its lines are not repeated as
    // steps.
    let quiet = opts.quiet || opts.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = Progress::new(action, None, quiet);
    let path = client.api(&format!("/transfer/apps/{}/{action}{query}", seg(id)));
    let resp = operation::run(client, Method::PUT, &path, None, &mut progress).await?;
    let value: Value = json_of(resp).await?.unwrap_or(Value::Null);
    let result: ProcessResult = parse(&value)?;
    if opts.json {
        json(&value)?;
    } else {
        let lines: String = result
            .lines
            .iter()
            .map(|l| format!("{}\n", l.line))
            .collect();
        print(&lines)?;
    }
    if result.exit_code != 0 {
        eprintln!("gantry: {action} of {id} failed");
        return Ok(Exit::Failed);
    }
    Ok(Exit::Ok)
}

async fn export(
    client: &Client,
    opts: &Opts,
    id: &str,
    file: &Path,
    images: bool,
) -> CliResult<Exit> {
    let path = client.api(&format!(
        "/transfer/export/{}?with_images={images}",
        seg(id)
    ));
    let resp = client.call(Method::GET, &path).await?;
    let mut progress = Progress::new("export", None, opts.quiet || opts.json);
    let bytes = super::download::save(resp, file, &mut progress).await?;
    let text = format!(
        "exported {id} to {} ({})\n",
        file.display(),
        super::progress::size(bytes)
    );
    say(
        opts,
        &serde_json::json!({ "File": file, "Bytes": bytes }),
        &text,
    )?;
    Ok(Exit::Ok)
}

async fn remove(client: &Client, opts: &Opts, id: &str, query: &str) -> CliResult<Exit> {
    let path = client.api(&format!("/transfer/apps/{}{query}", seg(id)));
    let resp = client.call(Method::DELETE, &path).await?;
    body_bytes(resp).await?;
    say(
        opts,
        &serde_json::json!({ "Removed": id }),
        &format!("removed {id}\n"),
    )?;
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_is_described_with_its_containers_and_images() {
        let v = serde_json::json!({
            "Id": "web:1", "Status": "Running", "Busy": false,
            "App": {"Name": "web", "Version": "1", "Imported": "2026-12-01T10:00:00Z"},
            "Containers": [{"Name": "web1_main_1", "ImageName": "busybox", "Status": "Up 2 minutes",
                            "Running": true, "PortMappings": ["8080:80/tcp"]}],
            "Images": [{"Name": "busybox", "Id": "sha256:0123456789abcdef", "Size": 1048576}]
        });
        let text = describe(&parse(&v).unwrap());
        assert!(text.contains("Id:          web:1\n"), "{text}");
        assert!(
            text.contains("  web1_main_1  busybox  Up 2 minutes  8080:80/tcp\n"),
            "{text}"
        );
        assert!(
            text.contains("  busybox  0123456789ab  1.0 MiB\n"),
            "{text}"
        );
        assert_eq!(seg("my app:1.0"), "my%20app%3A1%2E0");
    }
}
