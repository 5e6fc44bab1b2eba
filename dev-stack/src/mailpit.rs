//! Mailpit, the mail server of the dev stack and the tests: a real SMTP server whose HTTP API
//! and web UI show what arrived. Built once from its Go module at a pinned version into the
//! cache, run on free ports with its messages in a database file of its own.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use crate::{net, process};

/// The pinned Go module version of `github.com/axllent/mailpit` (builds in about a minute).
pub const VERSION: &str = "v1.33.1";
const TEST_DIR_PREFIX: &str = "patient-platform-test-mailpit-";

/// A running Mailpit: where mail goes (SMTP) and where it is read (HTTP API, UI).
#[derive(Debug)]
pub struct Mailpit {
    smtp_port: u16,
    http_port: u16,
    dir: PathBuf,
    /// The process of an ephemeral instance, while it runs.
    pid: Mutex<Option<u32>>,
    /// Whether its SMTP errors can be injected (`PUT /api/v1/chaos`): ephemeral instances, for
    /// tests of a server refusing.
    chaos: bool,
}

impl Mailpit {
    /// A private Mailpit on free ports, tied to this process' lifetime (tests).
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        let mailpit = Self {
            smtp_port: net::free_port()?,
            http_port: net::free_port()?,
            dir: process::fresh_test_dir(TEST_DIR_PREFIX),
            pid: Mutex::new(None),
            chaos: true,
        };
        mailpit.restart()?;
        Ok(mailpit)
    }

    /// Stops an ephemeral instance (SMTP refuses connections) keeping its messages: for tests of
    /// a mail server outage. [`Mailpit::restart`] brings it back on the same ports.
    pub fn stop(&self) {
        if let Some(pid) = self.pid.lock().expect("pid lock").take() {
            process::terminate(pid, Duration::from_secs(5));
        }
    }

    /// Starts an ephemeral instance (again) on its ports, with the messages it had.
    pub fn restart(&self) -> anyhow::Result<()> {
        let cmd = self.command()?;
        let pid = process::spawn_tied_to_this_process(cmd, libc::SIGKILL)?;
        *self.pid.lock().expect("pid lock") = Some(pid);
        self.wait_ready(pid)
    }

    /// The dev stack's Mailpit, detached, its files and pid in `dir`; reused when it runs.
    pub fn start_persistent(dir: &Path, smtp_port: u16, http_port: u16) -> anyhow::Result<Self> {
        let mailpit = Self { smtp_port, http_port, dir: dir.to_path_buf(), pid: Mutex::new(None), chaos: false };
        if read_pid(dir).is_some() {
            return Ok(mailpit);
        }
        let pid = process::spawn_detached(mailpit.command()?)?;
        fs::write(dir.join("mailpit.pid"), pid.to_string())?;
        mailpit.wait_ready(pid)?;
        Ok(mailpit)
    }

    /// Stops the dev stack's Mailpit; whether one was running.
    pub fn stop_persistent(dir: &Path) -> bool {
        let Some(pid) = read_pid(dir) else { return false };
        process::terminate(pid, Duration::from_secs(10));
        let _ = fs::remove_file(dir.join("mailpit.pid"));
        true
    }

    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// The web UI, and under `/api/v1` the API (`/api/v1/messages`, `/api/v1/search?query=`).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn command(&self) -> anyhow::Result<Command> {
        let bin = ensure()?;
        fs::create_dir_all(&self.dir)?;
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("mailpit.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--smtp")
            .arg(format!("127.0.0.1:{}", self.smtp_port))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--database")
            .arg(self.dir.join("mailpit.db"))
            // Keep every message a test or a developer may look for.
            .args(["--max", "100000"])
            .args(self.chaos.then_some("--enable-chaos"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    fn wait_ready(&self, pid: u32) -> anyhow::Result<()> {
        let up =
            || crate::services::http_status(self.http_port, "/api/v1/messages") == Some(200) && net::port_in_use(self.smtp_port);
        process::wait_ready("Mailpit", Duration::from_secs(60), &self.dir.join("mailpit.log"), || process::pid_alive(pid), up)
    }
}

fn read_pid(dir: &Path) -> Option<u32> {
    let pid = fs::read_to_string(dir.join("mailpit.pid")).ok()?.trim().parse().ok()?;
    process::pid_alive(pid).then_some(pid)
}

/// Path of the mailpit binary, built on first use (see [`crate::go::build`]).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let module = "github.com/axllent/mailpit";
    crate::go::build("mailpit", module, VERSION, "about a minute")
}
