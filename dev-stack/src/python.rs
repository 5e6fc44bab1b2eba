//! Python tools from PyPI, each pinned and installed once into a virtualenv of its own in the
//! cache: schemathesis (the contract fuzzer run against the API's OpenAPI document),
//! kubernetes-validate (offline schema validation of the Helm chart's manifests) and aiosmtpd (a
//! mail server without SMTPUTF8, for tests).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context};

use crate::process::{self, run_checked};

/// The pinned schemathesis version.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The pinned aiosmtpd version (the mail server without SMTPUTF8 of [`crate::plain_smtp`]).
pub const AIOSMTPD_VERSION: &str = "1.4.6";
/// The pinned kubernetes-validate version.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// schemathesis' `st` command.
pub fn schemathesis() -> anyhow::Result<PathBuf> {
    tool("schemathesis", SCHEMATHESIS_VERSION, "st")
}

/// The `aiosmtpd` command.
pub fn aiosmtpd() -> anyhow::Result<PathBuf> {
    tool("aiosmtpd", AIOSMTPD_VERSION, "aiosmtpd")
}

/// The `kubernetes-validate` command.
pub fn kubernetes_validate() -> anyhow::Result<PathBuf> {
    tool("kubernetes-validate", KUBERNETES_VALIDATE_VERSION, "kubernetes-validate")
}

/// Command `bin` of PyPI package `package` at `version`, installing it (and Python's venv with
/// apt as root) when missing.
fn tool(package: &str, version: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let home = crate::paths::cache_dir().join(format!("{package}-{version}"));
    let path = home.join("bin").join(bin);
    if path.exists() {
        return Ok(path);
    }
    // One installer at a time (test binaries run side by side); the first one's result serves all.
    fs::create_dir_all(crate::paths::cache_dir())?;
    let _lock = crate::go::lock(&crate::paths::cache_dir().join(format!("{package}-{version}.lock")))?;
    if path.exists() {
        return Ok(path);
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
    eprintln!("dev-stack: installing {package} {version} with pip (once per machine)");
    run_checked(
        Command::new(home.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("{package}=={version}"),
        ]),
        &format!("pip install {package}"),
    )
    .with_context(|| format!("failed to install {package}"))?;
    Ok(path)
}
