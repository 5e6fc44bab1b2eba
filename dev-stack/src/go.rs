//! The Go toolchain the Go-built tools (grpcurl, Jaeger) need: the machine's, or Debian's
//! `golang-go` installed when there is none and we are root.

use std::process::Command;

use crate::process;

pub fn ensure() -> anyhow::Result<()> {
    if Command::new("go").arg("version").output().is_err() && process::is_root() {
        crate::postgres::apt_install(&["golang-go"])?;
    }
    Ok(())
}
