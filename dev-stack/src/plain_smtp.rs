//! A second mail server for tests, unlike Mailpit: it does not offer SMTPUTF8 (RFC 6531), as
//! many relays do not, and it can be made slow and full (a late reply, then refusals). aiosmtpd from PyPI (pinned, installed once into the cache),
//! run on a free port; every mail it takes is a file in a Maildir the test reads.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use crate::{net, process};

const TEST_DIR_PREFIX: &str = "patient-platform-test-smtp-";

/// aiosmtpd's handler for [`PlainSmtp::start_first_slow_then_refusing`]: `-c` passes it the
/// delay and the Maildir.
const FIRST_SLOW_THEN_REFUSING: &str = r#"import asyncio
import mailbox


class FirstSlowThenRefusing:
    def __init__(self, delay, maildir):
        self.delay = delay
        self.box = mailbox.Maildir(maildir)
        self.seen = 0

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 2:
            parser.error("expected DELAY_SECONDS MAILDIR")
        return cls(float(args[0]), args[1])

    async def handle_DATA(self, server, session, envelope):
        self.seen += 1
        if self.seen > 1:
            return "552 5.2.2 mailbox full"
        self.box.add(envelope.original_content or envelope.content)
        await asyncio.sleep(self.delay)
        return "250 OK"
"#;

/// A running aiosmtpd without SMTPUTF8, storing what it accepts in a Maildir.
#[derive(Debug)]
pub struct PlainSmtp {
    port: u16,
    dir: PathBuf,
}

impl PlainSmtp {
    /// A private server on a free port, tied to this process' lifetime.
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        Self::start(|_, cmd| {
            // The Mailbox handler writes each mail into the Maildir.
            cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]);
            Ok(())
        })
    }

    /// The same, but a server that stores the first mail and answers it only after `delay`,
    /// then refuses every later mail (`552 5.2.2`): the conversation of a client that stopped
    /// waiting is left with a reply in flight.
    pub fn start_first_slow_then_refusing(delay: Duration) -> anyhow::Result<Self> {
        Self::start(|dir, cmd| {
            fs::write(dir.join("first_slow_then_refusing.py"), FIRST_SLOW_THEN_REFUSING)?;
            cmd.env("PYTHONPATH", dir).args(["-c", "first_slow_then_refusing.FirstSlowThenRefusing"]);
            cmd.arg(format!("{:.3}", delay.as_secs_f64()));
            Ok(())
        })
    }

    /// Starts aiosmtpd with the handler `handler` puts on the command line; the Maildir is its
    /// last argument.
    fn start(handler: impl FnOnce(&std::path::Path, &mut Command) -> anyhow::Result<()>) -> anyhow::Result<Self> {
        let bin = crate::python::aiosmtpd()?;
        let server = Self { port: net::free_port()?, dir: process::fresh_test_dir(TEST_DIR_PREFIX) };
        // The handlers create the Maildir (with its tmp, new and cur) when it does not exist.
        fs::create_dir_all(&server.dir)?;
        let log_path = server.dir.join("aiosmtpd.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        // -n: no setuid to nobody.
        cmd.args(["-n", "-l", &format!("127.0.0.1:{}", server.port)]);
        handler(&server.dir, &mut cmd)?;
        cmd.arg(server.maildir()).stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
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
