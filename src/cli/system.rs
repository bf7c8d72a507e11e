//! `gantry image ...` and `gantry task ...`.

use std::path::PathBuf;

use clap::Subcommand;
use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use super::apps::short_id;
use super::client::{body_bytes, json_of, CliResult, Client};
use super::operation::{self, Upload};
use super::output::{self, parse, print, say, table, when};
use super::progress::{size, Progress};
use super::{Exit, Opts};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List Docker's images
    #[command(visible_alias = "list")]
    Ls,
    /// Load images from a `docker save` archive (.tar)
    Load { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// List the running operations of every dialect (imports, starts, stops, image loads,
    /// services, app updates and snapshots, Flow Manager containers, ...)
    #[command(visible_alias = "list")]
    Ls,
    /// Cancel a running operation; it rolls back what it did
    Cancel { id: String },
}

/// Docker's ImageSummary, the parts the table shows.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ImageSummary {
    id: String,
    repo_tags: Vec<String>,
    created: u64,
    size: u64,
}

pub async fn run_image(cmd: ImageCmd, opts: &Opts) -> CliResult<Exit> {
    let client = Client::new(opts).await?;
    match cmd {
        ImageCmd::Ls => list_images(&client, opts).await,
        ImageCmd::Load { file } => {
            let upload = Upload::file(&file, "application/x-tar", Vec::new(), Vec::new()).await?;
            let quiet = opts.quiet || opts.json;
            let mut progress = Progress::new("load", Some(upload.length), quiet);
            let path = client.api("/system/images");
            let resp =
                operation::run(&client, Method::POST, &path, Some(upload), &mut progress).await?;
            let value: Value = json_of(resp).await?.unwrap_or(Value::Null);
            let refs: Vec<&str> = value["Loaded"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let id = short_id(value["Id"].as_str().unwrap_or(""));
            say(
                opts,
                &value,
                &format!("loaded {} ({id})\n", refs.join(", ")),
            )?;
            Ok(Exit::Ok)
        }
    }
}

async fn list_images(client: &Client, opts: &Opts) -> CliResult<Exit> {
    let Some(value) = output::list(client, &client.api("/system/images"), opts).await? else {
        return Ok(Exit::Ok);
    };
    let images: Vec<ImageSummary> = parse(&value)?;
    let mut rows = Vec::new();
    for i in &images {
        let tags = if i.repo_tags.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.repo_tags.clone()
        };
        for t in tags {
            rows.push(vec![t, short_id(&i.id), when(i.created), size(i.size)]);
        }
    }
    print(&table(&["IMAGE", "ID", "CREATED", "SIZE"], &rows))?;
    Ok(Exit::Ok)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Task {
    id: String,
    kind: String,
    app: Option<String>,
    started: u64,
    progress: Option<f64>,
    step: String,
}

pub async fn run_task(cmd: TaskCmd, opts: &Opts) -> CliResult<Exit> {
    let client = Client::new(opts).await?;
    match cmd {
        TaskCmd::Ls => {
            let Some(value) = output::list(&client, &client.api("/tasks"), opts).await? else {
                return Ok(Exit::Ok);
            };
            let tasks: Vec<Task> = parse(&value)?;
            print(&table(
                &["ID", "KIND", "APP", "STARTED", "PROGRESS", "STEP"],
                &tasks.iter().map(task_row).collect::<Vec<_>>(),
            ))?;
            Ok(Exit::Ok)
        }
        TaskCmd::Cancel { id } => {
            let path = client.api(&format!("/cancel/{}", super::apps::seg(&id)));
            body_bytes(client.call(Method::PUT, &path).await?).await?;
            let text = format!("cancel requested for {id}\n");
            say(opts, &serde_json::json!({ "Cancelled": id }), &text)?;
            Ok(Exit::Ok)
        }
    }
}

fn task_row(t: &Task) -> Vec<String> {
    vec![
        t.id.clone(),
        t.kind.clone(),
        t.app.clone().unwrap_or_default(),
        when(t.started),
        t.progress
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_default(),
        t.step.clone(),
    ]
}
