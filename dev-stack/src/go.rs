//! The Go toolchain the Go-built tools (grpcurl, Jaeger, Mailpit) need: the machine's, or
//! Debian's `golang-go` installed when there is none and we are root; and the one way those
//! tools are built from the Go module proxy at a pinned version into the cache.

// The cross-process build lock is flock(2).
#![allow(unsafe_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::process;

pub fn ensure() -> anyhow::Result<()> {
    if Command::new("go").arg("version").output().is_err() && process::is_root() {
        crate::postgres::apt_install(&["golang-go"])?;
    }
    Ok(())
}

/// The binary `name` built from Go package `package` at its module's `version`, in the
/// cache (`<name>-<version>/<name>`), built on first use: a module of our own pins the tool's
/// dependencies with `go get -tool`, then `go build` (no cgo). `takes` is said while it builds.
pub fn build(name: &str, package: &str, version: &str, takes: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::paths::cache_dir().join(format!("{name}-{version}"));
    let bin = dir.join(name);
    let lock_file = crate::paths::cache_dir().join(format!("{name}-{version}.lock"));
    build_once(&bin, &lock_file, || {
        eprintln!("dev-stack: building {name} {version} with go (once per machine, {takes})");
        build_tool(&dir, name, package, version)
    })
}

/// `bin` as it is, else made by `make` with the Go toolchain at hand. Tests (of one process or
/// several) may ask at once: one build at a time (a mutex here, `lock_file` across processes),
/// the others wait and then find it.
pub(crate) fn build_once(bin: &Path, lock_file: &Path, make: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<PathBuf> {
    if bin.exists() {
        return Ok(bin.to_path_buf());
    }
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _in_this_process = BUILDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(parent) = lock_file.parent() {
        fs::create_dir_all(parent)?;
    }
    let _across_processes = lock(lock_file)?;
    if !bin.exists() {
        ensure()?;
        make()?;
    }
    Ok(bin.to_path_buf())
}

fn build_tool(dir: &Path, name: &str, package: &str, version: &str) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let go = |args: &[&str], what: &str| {
        process::run_checked(Command::new("go").args(args).current_dir(dir).env("CGO_ENABLED", "0"), what).map(|_| ())
    };
    if !dir.join("go.mod").exists() {
        go(&["mod", "init", &format!("patient-platform/{name}")], "go mod init")?;
    }
    // The package, not the module: `go.sum` then covers what the package imports (for a command
    // below the module root, e.g. compose's `cmd`, the module root's imports are not enough).
    go(&["get", "-tool", &format!("{package}@{version}")], &format!("go get {name}"))?;
    let tmp = format!("{name}.tmp");
    go(&["build", "-o", &tmp, package], &format!("go build {name}")).with_context(|| format!("failed to build {name}"))?;
    fs::rename(dir.join(&tmp), dir.join(name))?;
    Ok(())
}

/// An exclusive lock on `path` (created if missing), held until the returned file is dropped.
pub(crate) fn lock(path: &Path) -> anyhow::Result<fs::File> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock(2) on a descriptor this function owns; the lock ends when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        anyhow::bail!("failed to lock {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(file)
}
