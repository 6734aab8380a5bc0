//! `sagactl projection rebuild`: runs the gateway's offline rebuild of its read model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use crate::args::RebuildArgs;

/// Where the workspace's other binaries are: beside sagactl's own executable (the cargo
/// target dir, or /usr/local/bin in the container image).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating sagactl's own executable")?;
    let dir = exe
        .parent()
        .context("sagactl's executable has no parent directory")?;
    Ok(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

pub async fn rebuild(a: RebuildArgs) -> Result<ExitCode> {
    let gateway = sibling_binary("saga-gateway")?;
    if !gateway.is_file() {
        bail!(
            "saga-gateway not found at {} (it must sit beside sagactl; build it with \
             `cargo build --workspace --bins`)",
            gateway.display()
        );
    }
    let mut cmd = tokio::process::Command::new(&gateway);
    cmd.arg("--rebuild-projection");
    if let Some(dir) = &a.data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    if let Some(url) = &a.nats_url {
        cmd.arg("--nats-url").arg(url);
    }
    if let Some(dir) = &a.sagas {
        cmd.arg("--sagas").arg(dir);
    }
    eprintln!(
        "rebuilding the projection in {} (the gateway using it must be stopped: it holds \
         the directory's lock)",
        a.data_dir.as_ref().map_or_else(
            || "the gateway's default data dir".to_string(),
            |d| d.display().to_string()
        )
    );
    let status = cmd
        .status()
        .await
        .with_context(|| format!("running {}", gateway.display()))?;
    if status.success() {
        eprintln!("projection rebuilt");
        return Ok(ExitCode::SUCCESS);
    }
    bail!(
        "{} --rebuild-projection failed ({status}); is a gateway still running on that data \
         directory?",
        gateway.display()
    )
}
