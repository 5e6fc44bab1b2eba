//! grpcurl, built from its Go module at a pinned version into the cache (`go install`), so the
//! journeys and the printed examples use the real tool.

use std::{path::PathBuf, process::Command};

use anyhow::Context;

use crate::process::run_checked;

/// The pinned grpcurl version.
pub const VERSION: &str = "v1.9.3";

/// Path of the grpcurl binary, installing it on first use (Go from Debian's `golang-go` when no
/// Go toolchain is present and we are root).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let bin_dir = crate::paths::cache_dir().join(format!("grpcurl-{VERSION}"));
    let bin = bin_dir.join("grpcurl");
    if bin.exists() {
        return Ok(bin);
    }
    crate::go::ensure()?;
    eprintln!("dev-stack: installing grpcurl {VERSION} with go install (once per machine)");
    run_checked(
        Command::new("go")
            .args(["install", &format!("github.com/fullstorydev/grpcurl/cmd/grpcurl@{VERSION}")])
            .env("GOBIN", &bin_dir)
            .env("CGO_ENABLED", "0"),
        "go install grpcurl",
    )
    .context("failed to install grpcurl")?;
    Ok(bin)
}
