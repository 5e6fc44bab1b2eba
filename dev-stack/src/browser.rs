//! A headless browser for the journeys that a person performs in a UI: Debian's Chromium and
//! `playwright-core` from the npm registry (pinned, installed into the cache).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::process::{self, run_checked};

/// The pinned playwright-core version.
pub const PLAYWRIGHT_VERSION: &str = "1.65.1";

/// What a Playwright script needs: the browser binary and a `NODE_PATH` holding playwright-core.
#[derive(Debug, Clone)]
pub struct Browser {
    pub chromium: PathBuf,
    pub node_path: PathBuf,
}

/// Installs what is missing (Chromium with apt as root, playwright-core with npm).
pub fn ensure() -> anyhow::Result<Browser> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    if !chromium.exists() {
        if !process::is_root() {
            bail!("Chromium is missing: install Debian's chromium package");
        }
        crate::postgres::apt_install(&["chromium"])?;
    }
    if Command::new("node").arg("--version").output().is_err() && process::is_root() {
        crate::postgres::apt_install(&["nodejs", "npm"])?;
    }
    let home = crate::paths::cache_dir().join(format!("playwright-{PLAYWRIGHT_VERSION}"));
    let node_path = home.join("node_modules");
    fs::create_dir_all(crate::paths::cache_dir())?;
    // One installer at a time (test binaries run side by side); the first one's result serves all.
    let _lock = crate::go::lock(&crate::paths::cache_dir().join(format!("playwright-{PLAYWRIGHT_VERSION}.lock")))?;
    if !node_path.join("playwright-core/package.json").exists() {
        fs::create_dir_all(&home)?;
        fs::write(home.join("package.json"), "{\"private\":true}\n")?;
        eprintln!("dev-stack: installing playwright-core {PLAYWRIGHT_VERSION} with npm (once per machine)");
        run_checked(
            Command::new("npm").current_dir(&home).args([
                "install",
                "--no-audit",
                "--no-fund",
                &format!("playwright-core@{PLAYWRIGHT_VERSION}"),
            ]),
            "npm install playwright-core",
        )
        .context("failed to install playwright-core")?;
    }
    Ok(Browser { chromium, node_path })
}
