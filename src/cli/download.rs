//! Saving a streamed answer (an exported bundle) to a file: written to `FILE.part` and
//! renamed when complete, so an interrupted export never leaves a truncated ZIP under the
//! name asked for.

use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use tokio::io::AsyncWriteExt;

use super::client::{CliError, CliResult};
use super::progress::Progress;
use super::Exit;

/// Writes the body of `resp` to `file`; the number of bytes written.
pub async fn save(
    resp: hyper::Response<Incoming>,
    file: &Path,
    progress: &mut Progress,
) -> CliResult<u64> {
    let part = PathBuf::from(format!("{}.part", file.display()));
    let written = tokio::select! {
        r = write(resp, &part, progress) => r,
        _ = tokio::signal::ctrl_c() => Err(CliError::new(Exit::Interrupted, "interrupted: the export was stopped")),
    };
    progress.finish();
    match written {
        Ok(n) => {
            tokio::fs::rename(&part, file)
                .await
                .map_err(|e| CliError::io(&file.display().to_string(), e))?;
            Ok(n)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

async fn write(
    resp: hyper::Response<Incoming>,
    part: &Path,
    progress: &mut Progress,
) -> CliResult<u64> {
    let declared = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    progress.set_total(declared);
    let name = part.display().to_string();
    let mut out = tokio::fs::File::create(part)
        .await
        .map_err(|e| CliError::io(&name, e))?;
    let mut body = resp.into_body();
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CliError::io("the download broke off", e))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .await
                .map_err(|e| CliError::io(&name, e))?;
            n += data.len() as u64;
            progress.bytes(n);
        }
    }
    out.flush().await.map_err(|e| CliError::io(&name, e))?;
    out.sync_all().await.map_err(|e| CliError::io(&name, e))?;
    Ok(n)
}
