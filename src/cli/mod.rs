//! The operator's commands (`gantry app|image|task|check|completions|manpage`), in the same
//! binary as the daemon. They talk to the local daemon over its transfer API (the first
//! transfer listener of the configuration, or `--url`), with the token of the listener when
//! the user may read its token file. Human tables by default, `--json` for scripts, progress
//! bars on a terminal. Exit codes: [`Exit`].

mod apps;
mod check;
mod client;
mod docs;
mod download;
mod logs;
mod operation;
mod output;
mod progress;
mod system;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// The exit statuses, for `--help` and the manual page.
pub const EXIT_CODES: &str = "\
Exit status of gantry serve: 0 after a normal stop, 1 a runtime failure, 78 a bad configuration.

Exit status of the other commands:
  0   success
  1   the daemon refused the request or the operation failed (gantry check: a check failed)
  2   the command line is wrong
  3   the app, image or task does not exist
  69  the daemon, or Docker behind it, is not reachable
  77  the token was refused, or the token file cannot be read
  78  the configuration cannot be used
  130 interrupted (Ctrl-C); a running operation was cancelled and rolled back";

/// What a command's exit status says (README "CLI").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The daemon refused the request, or the operation failed.
    Failed = 1,
    /// The app, image or task does not exist.
    NotFound = 3,
    /// The daemon, or Docker behind it, is not reachable (EX_UNAVAILABLE).
    Unavailable = 69,
    /// The listener refused the token, or the token file cannot be read (EX_NOPERM).
    NoPermission = 77,
    /// The configuration cannot be used (EX_CONFIG).
    Config = 78,
    /// Interrupted (Ctrl-C); a running operation was cancelled.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Where the daemon is and how the answers are shown; valid after every operator command.
#[derive(Args, Debug, Clone, Default)]
pub struct Opts {
    /// Configuration naming the listener to use [default: /etc/gantry/gantry.toml when it
    /// exists]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The daemon's address instead of the configured listener: http[s]://HOST:PORT[/PREFIX]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// For a TLS listener: trust the certificates this CA (PEM) signed, checked for the
    /// listener's address (or the host of an https --url) [default: trust exactly the
    /// listener's tls_cert_file]
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the bearer token [default: the listener's token_file]
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of tables and messages
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars or step lines
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Operator {
    /// Apps: list, show, import, export, start, stop, logs, remove
    App {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: apps::AppCmd,
    },
    /// Docker images: list, load
    Image {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: system::ImageCmd,
    },
    /// Running operations: list, cancel
    Task {
        #[command(flatten)]
        opts: Opts,
        #[command(subcommand)]
        cmd: system::TaskCmd,
    },
    /// Check the installation: configuration, listeners, Docker, disk space, nftables,
    /// the Intervirt dataplane, the clock (exit 1 when a check fails)
    Check {
        /// Configuration file [default: /etc/gantry/gantry.toml when it exists]
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory
    Manpage {
        /// Write gantry.1, gantry-app.1, gantry-app-import.1, ... into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs an operator command; the runtime is a small one, as a client needs.
pub fn run(op: Operator) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gantry: cannot start the async runtime: {e}");
            return Exit::Failed.into();
        }
    };
    let result = runtime.block_on(async move {
        match op {
            Operator::App { opts, cmd } => apps::run(cmd, &opts).await,
            Operator::Image { opts, cmd } => system::run_image(cmd, &opts).await,
            Operator::Task { opts, cmd } => system::run_task(cmd, &opts).await,
            Operator::Check { config, json } => Ok(check::run(config.as_deref(), json).await),
            Operator::Completions { shell } => docs::completions(shell),
            Operator::Manpage { dir } => docs::manpage(dir.as_deref()),
        }
    });
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("gantry: {e}");
            e.exit().into()
        }
    }
}
