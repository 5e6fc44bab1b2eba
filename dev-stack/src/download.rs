//! Downloads of pinned artifacts into the cache dir, fetched once and reused by every clone.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::process::run_checked;

/// Maven Central, the one artifact source of the launchers.
pub const MAVEN_CENTRAL: &str = "https://repo1.maven.org/maven2";

/// `<cache>/downloads/<file>`, downloaded from `url` unless already there.
pub fn fetch(url: &str, file: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::paths::cache_dir().join("downloads");
    fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let target = dir.join(file);
    if target.exists() {
        return Ok(target);
    }
    let partial = dir.join(format!("{file}.part-{}", std::process::id()));
    eprintln!("dev-stack: downloading {url}");
    run_checked(
        Command::new("curl").args(["-fsSL", "--retry", "3", "--connect-timeout", "20", "-o"]).arg(&partial).arg(url),
        "curl",
    )?;
    fs::rename(&partial, &target)?;
    Ok(target)
}

/// Extracts a `.tar.gz` into `<cache>/<name>` once (atomically: extract aside, then rename).
pub fn extract_once(archive: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let cache = crate::paths::cache_dir();
    let target = cache.join(name);
    if target.exists() {
        return Ok(target);
    }
    let scratch = cache.join(format!("{name}.extract-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    run_checked(Command::new("tar").arg("-xzf").arg(archive).arg("-C").arg(&scratch).arg("--strip-components=1"), "tar")?;
    if fs::rename(&scratch, &target).is_err() {
        // Someone else extracted it meanwhile; theirs is as good as ours.
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(target)
}
