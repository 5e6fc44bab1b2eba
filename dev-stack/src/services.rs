//! The platform's own services as background processes of the dev stack: started from the
//! workspace's build output with pid files and log files in the state dir, so `up` can be re-run
//! and `down` stops exactly what `up` started.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use crate::process;

/// One service process: binary name, environment, and the HTTP port that answers `/health/ready`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub env: Vec<(String, String)>,
    pub ready_port: u16,
}

/// Where pid and log files of services live.
#[derive(Debug, Clone)]
pub struct ServiceDirs {
    pub run: PathBuf,
    pub logs: PathBuf,
}

impl ServiceDirs {
    pub fn under(state: &Path) -> Self {
        Self { run: state.join("run"), logs: state.join("logs") }
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.pid"))
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The pid of a running service we started, if any.
    pub fn running_pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(name)).ok()?.trim().parse().ok()?;
        process::pid_alive(pid).then_some(pid)
    }
}

/// The directory cargo writes binaries of the dev profile to.
pub fn binary_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::workspace_root().join("target"))
        .join("debug")
}

/// Starts the service unless it already runs; returns its pid.
pub fn start(spec: &ServiceSpec, dirs: &ServiceDirs) -> anyhow::Result<u32> {
    if let Some(pid) = dirs.running_pid(spec.name) {
        return Ok(pid);
    }
    if crate::net::port_in_use(spec.ready_port) {
        bail!("{}: port {} is taken by another program", spec.name, spec.ready_port);
    }
    fs::create_dir_all(&dirs.run)?;
    fs::create_dir_all(&dirs.logs)?;
    let log = fs::File::create(dirs.log_file(spec.name))?;
    let mut cmd = Command::new(binary_dir().join(spec.name));
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let pid = process::spawn_detached(cmd).with_context(|| format!("failed to start {} (was it built?)", spec.name))?;
    fs::write(dirs.pid_file(spec.name), pid.to_string())?;
    Ok(pid)
}

/// Waits until `GET /health/ready` answers 200, failing early (with the log's tail) if the
/// process dies.
pub fn wait_ready(spec: &ServiceSpec, dirs: &ServiceDirs, limit: Duration) -> anyhow::Result<()> {
    process::wait_ready(
        spec.name,
        limit,
        &dirs.log_file(spec.name),
        || dirs.running_pid(spec.name).is_some(),
        || http_status(spec.ready_port, "/health/ready") == Some(200),
    )
}

/// SIGTERM (graceful), then SIGKILL after `grace`. True when something was stopped.
pub fn stop(name: &str, dirs: &ServiceDirs, grace: Duration) -> bool {
    let stopped = match dirs.running_pid(name) {
        Some(pid) => {
            process::terminate(pid, grace);
            true
        }
        None => false,
    };
    let _ = fs::remove_file(dirs.pid_file(name));
    stopped
}

/// Status code of a plain HTTP GET on 127.0.0.1, `None` when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
