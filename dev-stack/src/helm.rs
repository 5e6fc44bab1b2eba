//! Helm, to lint and render the platform's chart (`deploy/helm/patient-platform`): built once
//! from its Go module at a pinned version into the cache.

use std::path::PathBuf;

/// The pinned Go module version of `helm.sh/helm/v3`.
pub const VERSION: &str = "v3.22.0";

/// Path of the helm binary, built on first use (see [`crate::go::build`]).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let package = "helm.sh/helm/v3/cmd/helm";
    crate::go::build("helm", package, VERSION, "a few minutes")
}
