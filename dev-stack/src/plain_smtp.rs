//! A second mail server for tests, unlike Mailpit in one way: it does not offer SMTPUTF8
//! (RFC 6531), as many relays do not. aiosmtpd from PyPI (pinned, installed once into the cache),
//! run on a free port; every mail it takes is a file in a Maildir the test reads.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use crate::{net, process};

const TEST_DIR_PREFIX: &str = "patient-platform-test-smtp-";

/// A running aiosmtpd without SMTPUTF8, storing what it accepts in a Maildir.
#[derive(Debug)]
pub struct PlainSmtp {
    port: u16,
    dir: PathBuf,
}

impl PlainSmtp {
    /// A private server on a free port, tied to this process' lifetime.
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        let bin = crate::python::aiosmtpd()?;
        let server = Self { port: net::free_port()?, dir: process::fresh_test_dir(TEST_DIR_PREFIX) };
        // The handler creates the Maildir (with its tmp, new and cur) when it does not exist.
        fs::create_dir_all(&server.dir)?;
        let log_path = server.dir.join("aiosmtpd.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        // -n: no setuid to nobody; the Mailbox handler writes each mail into the Maildir.
        cmd.args(["-n", "-l", &format!("127.0.0.1:{}", server.port), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(server.maildir())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let pid = process::spawn_tied_to_this_process(cmd, libc::SIGKILL)?;
        let port = server.port;
        process::wait_ready(
            "aiosmtpd",
            Duration::from_secs(60),
            &log_path,
            || process::pid_alive(pid),
            || net::port_in_use(port),
        )?;
        Ok(server)
    }

    pub fn smtp_port(&self) -> u16 {
        self.port
    }

    /// Every mail accepted so far, as its raw text.
    pub fn mails(&self) -> Vec<String> {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| fs::read_dir(self.maildir().join(sub)).ok())
            .flatten()
            .flatten()
            .filter_map(|entry| fs::read_to_string(entry.path()).ok())
            .collect()
    }

    fn maildir(&self) -> PathBuf {
        self.dir.join("Maildir")
    }
}
