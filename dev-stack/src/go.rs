//! The Go toolchain the Go-built tools (grpcurl, Jaeger, Mailpit) need: the machine's, or
//! Debian's `golang-go` installed when there is none and we are root; and the one way those
//! tools are built from the Go module proxy at a pinned version into the cache.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context;

use crate::process;

pub fn ensure() -> anyhow::Result<()> {
    if Command::new("go").arg("version").output().is_err() && process::is_root() {
        crate::postgres::apt_install(&["golang-go"])?;
    }
    Ok(())
}

/// The binary `name` built from Go package `package` of module `module` at `version`, in the
/// cache (`<name>-<version>/<name>`), built on first use: a module of our own pins the tool's
/// dependencies with `go get -tool`, then `go build` (no cgo). `takes` is said while it builds.
pub fn build(name: &str, module: &str, package: &str, version: &str, takes: &str) -> anyhow::Result<PathBuf> {
    // Tests of one process may ask at once: one build at a time, the others then find it.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = crate::paths::cache_dir().join(format!("{name}-{version}"));
    let bin = dir.join(name);
    if bin.exists() {
        return Ok(bin);
    }
    ensure()?;
    eprintln!("dev-stack: building {name} {version} with go (once per machine, {takes})");
    fs::create_dir_all(&dir)?;
    let go = |args: &[&str], what: &str| {
        process::run_checked(Command::new("go").args(args).current_dir(&dir).env("CGO_ENABLED", "0"), what).map(|_| ())
    };
    if !dir.join("go.mod").exists() {
        go(&["mod", "init", &format!("patient-platform/{name}")], "go mod init")?;
    }
    go(&["get", "-tool", &format!("{module}@{version}")], &format!("go get {name}"))?;
    let tmp = format!("{name}.tmp");
    go(&["build", "-o", &tmp, package], &format!("go build {name}")).with_context(|| format!("failed to build {name}"))?;
    fs::rename(dir.join(&tmp), &bin)?;
    Ok(bin)
}
