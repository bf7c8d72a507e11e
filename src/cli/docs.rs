//! Shell completions and manual pages, generated from the clap definitions at run time (no
//! build step and no network: Yocto and the .deb build call the built binary).

use std::path::Path;

use clap::CommandFactory;

use super::client::{CliError, CliResult};
use super::Exit;

pub fn completions(shell: clap_complete::Shell) -> CliResult<Exit> {
    let mut cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "gantry", &mut out);
    super::output::print(&String::from_utf8_lossy(&out))?;
    Ok(Exit::Ok)
}

/// `gantry.1` on stdout, or with `dir` one page per command (`gantry-app-import.1`, ...).
pub fn manpage(dir: Option<&Path>) -> CliResult<Exit> {
    let cmd = crate::Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::io(&dir.display().to_string(), e))?;
            clap_mangen::generate_to(cmd, dir)
                .map_err(|e| CliError::io(&dir.display().to_string(), e))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::io("manpage", e))?;
            super::output::print(&String::from_utf8_lossy(&out))?;
        }
    }
    Ok(Exit::Ok)
}
