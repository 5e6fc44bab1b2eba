//! schemathesis (PyPI), the contract fuzzer run against the API's OpenAPI document: pinned,
//! installed once into a virtualenv in the cache.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::process::{self, run_checked};

/// The pinned schemathesis version.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The `st` command, installing it (and Python's venv with apt as root) when missing.
pub fn ensure() -> anyhow::Result<PathBuf> {
    let home = crate::paths::cache_dir().join(format!("schemathesis-{SCHEMATHESIS_VERSION}"));
    let st = home.join("bin/st");
    if st.exists() {
        return Ok(st);
    }
    let venv = || Command::new("python3").args(["-m", "venv"]).arg(&home).status().is_ok_and(|s| s.success());
    if !venv() {
        if !process::is_root() {
            bail!("python3 with venv is missing: install Debian's python3-venv");
        }
        crate::postgres::apt_install(&["python3", "python3-venv"])?;
        if !venv() {
            bail!("python3 -m venv failed");
        }
    }
    eprintln!("dev-stack: installing schemathesis {SCHEMATHESIS_VERSION} with pip (once per machine)");
    run_checked(
        Command::new(home.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
        ]),
        "pip install schemathesis",
    )
    .context("failed to install schemathesis")?;
    Ok(st)
}
