//! Finding a JDK for the Java-based infrastructure (Keycloak, Kafka).

use std::{fs, path::PathBuf};

use anyhow::Context;

use crate::process;

/// A JDK whose major version is in `majors` (first preference first), from `/usr/lib/jvm`.
/// When none is there and we are root, Debian's `openjdk-17-jdk-headless` is installed.
pub fn java_home(majors: &[u32]) -> anyhow::Result<PathBuf> {
    if let Some(home) = find(majors) {
        return Ok(home);
    }
    if process::is_root() {
        crate::postgres::apt_install(&["openjdk-17-jdk-headless"])?;
    }
    find(majors).with_context(|| format!("no JDK of version {majors:?} under /usr/lib/jvm"))
}

fn find(majors: &[u32]) -> Option<PathBuf> {
    let installed: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/jvm")
        .ok()?
        .flatten()
        .filter(|e| e.path().join("bin/java").exists() && !e.path().is_symlink())
        .filter_map(|e| Some((major_of(e.file_name().to_str()?)?, e.path())))
        .collect();
    majors.iter().find_map(|m| installed.iter().find(|(v, _)| v == m).map(|(_, p)| p.clone()))
}

/// `java-17-openjdk-amd64` → 17, `temurin-25-jdk-amd64` → 25.
fn major_of(dir: &str) -> Option<u32> {
    dir.split(['-', '.']).find_map(|part| part.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_major_version_from_debian_and_temurin_names() {
        assert_eq!(super::major_of("java-17-openjdk-amd64"), Some(17));
        assert_eq!(super::major_of("temurin-25-jdk-amd64"), Some(25));
        assert_eq!(super::major_of("java-1.17.0-openjdk-amd64"), Some(1));
    }
}
