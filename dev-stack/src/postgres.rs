//! A private PostgreSQL cluster from Debian's server binaries, on its own port and data dir.
//!
//! - Binaries: the newest `/usr/lib/postgresql/<v>/bin`, else `pg_config --bindir`; when none is
//!   found and we are root, `apt-get install -y postgresql` first.
//! - `initdb` refuses to run as root, so as root every server command runs as the `postgres` user.
//! - Password authentication (scram) on 127.0.0.1 only; the unix socket lives in the data dir.
//!
//! [`PgCluster::shared_for_tests`] gives each test binary one throw-away cluster on a free port
//! that dies with the binary; [`PgCluster::start_persistent`] runs the dev stack's cluster.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use sqlx::{Connection, Executor, PgConnection};

use crate::process::{self, chown_tree, run_as, run_checked};

/// Superuser of every cluster we create.
const SUPERUSER: &str = "postgres";
/// Prefix of the data dirs of test clusters (stale ones are removed at the next start).
const TEST_DIR_PREFIX: &str = "patient-platform-test-pg-";

/// A running cluster.
#[derive(Debug, Clone)]
pub struct PgCluster {
    pub port: u16,
    pub data_dir: PathBuf,
    password: String,
    /// An acknowledged commit survives a crash of the server (not of the machine).
    crash_safe: bool,
}

impl PgCluster {
    /// One cluster per test process, started on first use on a free port in a temp dir; it
    /// receives SIGQUIT (immediate shutdown) when the test process exits.
    pub fn shared_for_tests() -> &'static PgCluster {
        static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
        CLUSTER.get_or_init(|| {
            Self::start_ephemeral().unwrap_or_else(|e| panic!("failed to start the test PostgreSQL cluster: {e:#}"))
        })
    }

    /// Starts a throw-away cluster tied to this process' lifetime (a container with the Docker
    /// backend, see [`crate::containers::backend`]).
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        Self::start_ephemeral_with(false)
    }

    /// The same, but every acknowledged commit survives [`PgCluster::crash`] (`synchronous_commit`
    /// stays on; `fsync` stays off: the machine does not crash, only the server), for tests that
    /// kill PostgreSQL and count what was committed.
    pub fn start_ephemeral_crash_safe() -> anyhow::Result<Self> {
        Self::start_ephemeral_with(true)
    }

    fn start_ephemeral_with(crash_safe: bool) -> anyhow::Result<Self> {
        if crate::containers::backend() == crate::containers::Backend::Docker {
            let (port, password) = (crate::net::free_port()?, format!("test-{}", nanos()));
            // Lives as long as the process; removed at exit.
            Box::leak(Box::new(crate::containers::postgres(port, &password)?));
            return Ok(Self { port, data_dir: PathBuf::new(), password, crash_safe });
        }
        let bin = bin_dir()?;
        let owner = service_user()?;
        let data_dir = process::fresh_test_dir(TEST_DIR_PREFIX);
        let password = format!("test-{}", nanos());
        init_data_dir(&bin, &data_dir, &password, owner, true)?;
        let cluster = Self { port: crate::net::free_port()?, data_dir, password, crash_safe };
        cluster.launch_ephemeral(&bin, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Runs the server of an ephemeral cluster, tied to this process, and waits until it serves.
    fn launch_ephemeral(&self, bin: &Path, limit: Duration) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args(server_args(self.port, &self.data_dir));
        // Durability against an OS crash is irrelevant for a cluster that dies with the tests;
        // speed is not. Without synchronous_commit a server crash may lose the last commits.
        cmd.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        if !self.crash_safe {
            cmd.args(["-c", "synchronous_commit=off"]);
        }
        cmd.stdout(fs::File::options().create(true).append(true).open(self.data_dir.join("server.log"))?);
        cmd.stderr(fs::File::options().append(true).open(self.data_dir.join("server.log"))?);
        run_as(&mut cmd, service_user()?);
        let pid = process::spawn_tied_to_this_process(cmd, libc::SIGQUIT)?;
        process::wait_ready(
            &format!("PostgreSQL on port {}", self.port),
            limit,
            &self.data_dir.join("server.log"),
            || process::pid_alive(pid),
            || self.is_running(bin),
        )
    }

    /// Crashes an ephemeral cluster: SIGKILL to the postmaster, as the OOM killer would. Its
    /// backends notice and exit; committed work stays in the WAL.
    pub fn crash(&self) -> anyhow::Result<()> {
        let pid: u32 = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .context("no postmaster.pid: is this a running local cluster?")?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("malformed postmaster.pid")?;
        process::kill(pid);
        Ok(())
    }

    /// Starts a crashed ephemeral cluster again (crash recovery replays the WAL). Retries while
    /// the old backends still hold the shared memory.
    pub fn restart(&self) -> anyhow::Result<()> {
        let bin = bin_dir()?;
        let start = std::time::Instant::now();
        loop {
            match self.launch_ephemeral(&bin, Duration::from_secs(60)) {
                Ok(()) => return Ok(()),
                // Most likely "pre-existing shared memory block is still in use": the killed
                // postmaster's backends have not all exited yet.
                Err(_) if start.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(500)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts (initialising on first use) the dev stack's durable cluster in `data_dir`; a no-op
    /// when it already runs. `password` is only used by the first initialisation.
    pub fn start_persistent(data_dir: &Path, port: u16, password: &str) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let owner = service_user()?;
        if !data_dir.join("PG_VERSION").exists() {
            init_data_dir(&bin, data_dir, password, owner, false)?;
        }
        let cluster = Self { port, data_dir: data_dir.to_path_buf(), password: password.to_owned(), crash_safe: true };
        if cluster.is_running(&bin) {
            return Ok(cluster);
        }
        if crate::net::port_in_use(port) {
            bail!("port {port} is taken by another program; set DEV_PG_PORT to a free port");
        }
        let opts = server_args(port, data_dir).join(" ");
        let mut cmd = Command::new(bin.join("pg_ctl"));
        cmd.arg("start").arg("-w").arg("-t").arg("60").arg("-D").arg(data_dir);
        cmd.arg("-l").arg(data_dir.join("server.log")).arg("-o").arg(opts);
        run_checked(run_as(&mut cmd, owner), "pg_ctl start")?;
        Ok(cluster)
    }

    /// Stops a cluster started by [`PgCluster::start_persistent`] (fast shutdown).
    pub fn stop_persistent(data_dir: &Path) -> anyhow::Result<bool> {
        if !data_dir.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let bin = bin_dir()?;
        let mut cmd = Command::new(bin.join("pg_ctl"));
        cmd.args(["stop", "-m", "fast", "-w", "-D"]).arg(data_dir);
        run_checked(run_as(&mut cmd, service_user()?), "pg_ctl stop")?;
        Ok(true)
    }

    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    /// Creates database `name` unless it exists.
    pub async fn ensure_database(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await.context("failed to connect to PostgreSQL")?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            // Identifiers cannot be bound as parameters; quote_ident does the escaping.
            let quoted: String = sqlx::query_scalar("SELECT quote_ident($1)").bind(name).fetch_one(&mut conn).await?;
            conn.execute(format!("CREATE DATABASE {quoted}").as_str()).await?;
        }
        Ok(())
    }

    /// Creates a new, empty database named `<prefix>_<unique suffix>` and returns its URL:
    /// every test gets its own.
    pub async fn fresh_database(&self, prefix: &str) -> anyhow::Result<String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}_{}_{}", nanos(), SEQ.fetch_add(1, Ordering::Relaxed));
        self.ensure_database(&name).await?;
        Ok(self.url(&name))
    }

    fn is_running(&self, bin: &Path) -> bool {
        Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
            && self.data_dir.join("postmaster.pid").exists()
    }
}

/// Makes sure the server binaries are installed (installing them as root when missing).
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    bin_dir()
}

fn server_args(port: u16, data_dir: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        format!("unix_socket_directories={}", data_dir.display()),
        "-c".into(),
        "max_connections=300".into(),
    ]
}

fn init_data_dir(bin: &Path, dir: &Path, password: &str, owner: Option<(u32, u32)>, no_sync: bool) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    set_mode(dir, 0o700)?;
    let pwfile = dir.with_extension("pw");
    fs::write(&pwfile, password)?;
    chown_tree(dir, owner)?;
    chown_tree(&pwfile, owner)?;
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D").arg(dir).args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale", "--auth=scram-sha-256"]);
    cmd.arg(format!("--pwfile={}", pwfile.display()));
    if no_sync {
        cmd.arg("--no-sync");
    }
    let result = run_checked(run_as(&mut cmd, owner), "initdb");
    let _ = fs::remove_file(&pwfile);
    result.map(|_| ())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

/// The user that owns and runs the server: ourselves, or `postgres` when we are root.
fn service_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !process::is_root() {
        return Ok(None);
    }
    process::user_ids(SUPERUSER)
        .map(Some)
        .context("running as root but there is no `postgres` user (install the postgresql package)")
}

/// Finds the server binaries, installing Debian's `postgresql` when absent and we are root.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = find_bin_dir() {
        return Ok(dir);
    }
    if !process::is_root() {
        bail!("PostgreSQL server binaries not found: install them (e.g. `sudo apt-get install -y postgresql`)");
    }
    apt_install(&["postgresql"])?;
    find_bin_dir().context("PostgreSQL still not found after apt-get install postgresql")
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    bin.join("initdb").exists().then_some(bin)
}

/// `apt-get install -y` with the package lists refreshed first.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    // Test binaries run side by side may install at the same time: one apt-get at a time (and
    // waiting for dpkg's own lock, should something else hold it).
    let _lock = crate::go::lock(&crate::paths::cache_dir().join("apt.lock"))?;
    eprintln!("dev-stack: installing {} with apt-get", packages.join(" "));
    run_checked(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update"]), "apt-get update")?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends"])
            .args(packages),
        "apt-get install",
    )?;
    Ok(())
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default()
}
