//! Where the dev stack keeps state (data dirs, logs, pid files) and download caches: outside the
//! work tree, so a fresh clone is clean and caches survive across clones.

use std::path::PathBuf;

/// State of the long-running dev stack: `$DEV_STACK_HOME`, else `/var/lib/patient-platform`
/// for root (readable by the `postgres` user, unlike root's home), else
/// `~/.local/share/patient-platform`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEV_STACK_HOME") {
        return PathBuf::from(dir);
    }
    if crate::process::is_root() {
        return PathBuf::from("/var/lib/patient-platform");
    }
    home().join(".local/share/patient-platform")
}

/// Download cache: `$DEV_STACK_CACHE`, else `/var/cache/patient-platform` for root, else
/// `~/.cache/patient-platform`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEV_STACK_CACHE") {
        return PathBuf::from(dir);
    }
    if crate::process::is_root() {
        return PathBuf::from("/var/cache/patient-platform");
    }
    home().join(".cache/patient-platform")
}

/// The workspace root: the parent of the running package's manifest dir. Cargo sets
/// `CARGO_MANIFEST_DIR` for `cargo run` and `cargo test` at run time; that is preferred over the
/// compile-time value because one target dir may serve several clones.
pub fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().expect("every package sits inside the workspace").to_path_buf()
}

/// Cargo's build output: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}
