//! Keycloak from the `org.keycloak:keycloak-quarkus-dist` archive on Maven Central (pinned,
//! cached), run with `kc.sh start-dev --import-realm` on explicit HTTP and management ports.
//!
//! Every instance runs from its own copy of the distribution, so its database (dev-file H2 under
//! `data/`), imported realm and build state are private to it; test instances live in temp dirs
//! and die with the test binary.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context};

use crate::{download, net, process};

/// The pinned Keycloak version.
pub const VERSION: &str = "26.7.3";
/// JDK majors Keycloak runs on here, preferred first.
const JAVA_MAJORS: [u32; 3] = [21, 17, 25];
/// The realm file imported at start (relative to the workspace root).
pub const REALM_FILE: &str = "keycloak/realm-export.json";
/// The platform's realm.
pub const REALM: &str = "patient-management";
/// The confidential client whose service account the services (and scripted callers) use, with
/// its dev-realm secret.
pub const SERVICE_CLIENT: (&str, &str) = ("ms-api", "ms-api-dev-secret");
/// Dev users of the realm, one per composite role, with their dev passwords.
pub const CLINICIAN: (&str, &str) = ("clinician", "clinician-dev");
pub const ANALYST: (&str, &str) = ("analyst", "analyst-dev");
pub const ADMIN_USER: (&str, &str) = ("admin", "admin-dev");
/// Master-realm admin of dev and test instances (local only).
const ADMIN: (&str, &str) = ("admin", "admin");
const TEST_DIR_PREFIX: &str = "patient-platform-test-kc-";

/// A Keycloak instance (running or stopped).
#[derive(Debug)]
pub struct Keycloak {
    home: PathBuf,
    http_port: u16,
    management_port: u16,
    pid: Option<u32>,
    /// Test instances receive SIGTERM when this process dies.
    tied_to_process: bool,
    /// Set with the Docker backend: the server is this container.
    container: Option<crate::containers::Started>,
}

impl Keycloak {
    /// One instance per test process, started on first use.
    pub fn shared_for_tests() -> &'static Keycloak {
        static KC: OnceLock<Keycloak> = OnceLock::new();
        KC.get_or_init(|| Self::start_ephemeral().unwrap_or_else(|e| panic!("failed to start the test Keycloak: {e:#}")))
    }

    /// A private instance on free ports in a temp dir, tied to this process' lifetime (a
    /// container with the Docker backend).
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        if crate::containers::backend() == crate::containers::Backend::Docker {
            let (http_port, management_port) = (net::free_port()?, net::free_port()?);
            let realm = crate::paths::workspace_root().join(REALM_FILE);
            let container = Some(crate::containers::keycloak(http_port, management_port, ADMIN, realm)?);
            let kc = Self { home: PathBuf::new(), http_port, management_port, pid: None, tied_to_process: true, container };
            kc.wait_ready(Duration::from_secs(240))?;
            return Ok(kc);
        }
        let dist = ensure_distribution()?;
        let home = process::fresh_test_dir(TEST_DIR_PREFIX);
        prepare_home(&dist, &home)?;
        let mut kc = Self::on_free_ports(home, true)?;
        kc.start()?;
        Ok(kc)
    }

    fn on_free_ports(home: PathBuf, tied_to_process: bool) -> anyhow::Result<Self> {
        Ok(Self {
            home,
            http_port: net::free_port()?,
            management_port: net::free_port()?,
            pid: None,
            tied_to_process,
            container: None,
        })
    }

    /// The dev stack's instance in `home` (created on first use) on the given ports; a no-op
    /// when it already answers.
    pub fn start_persistent(home: &Path, http_port: u16, management_port: u16) -> anyhow::Result<Self> {
        let dist = ensure_distribution()?;
        if !home.join("bin/kc.sh").exists() {
            prepare_home(&dist, home)?;
        } else {
            copy_realm(home)?;
        }
        let mut kc =
            Self { home: home.to_path_buf(), http_port, management_port, pid: None, tied_to_process: false, container: None };
        let changed = realm_changed(home);
        if kc.is_ready() {
            if changed {
                eprintln!(
                    "warning: {REALM_FILE} changed since this Keycloak imported it; `cargo xtask down` and \
                     `cargo xtask up` apply it"
                );
            }
            return Ok(kc);
        }
        for port in [http_port, management_port] {
            if net::port_in_use(port) {
                bail!("port {port} is taken by another program; choose other Keycloak ports");
            }
        }
        // `--import-realm` skips a realm that exists: a changed dev realm needs a fresh store.
        if changed && home.join("data/h2").exists() {
            println!("==> the realm export changed: resetting the dev Keycloak's store (users and roles made in the console are reset)");
            fs::remove_dir_all(home.join("data/h2"))?;
        }
        kc.start()?;
        fs::copy(crate::paths::workspace_root().join(REALM_FILE), home.join(IMPORTED_REALM))?;
        Ok(kc)
    }

    /// Starts (or restarts) the server and waits until `/health/ready` answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if let Some(started) = &self.container {
            started.resume("Listening on", Duration::from_secs(240))?;
            return self.wait_ready(Duration::from_secs(240));
        }
        fs::create_dir_all(self.home.join("data/import"))?;
        let java_home = crate::java::java_home(&JAVA_MAJORS)?;
        let log = fs::File::options().create(true).append(true).open(self.log_file())?;
        let mut cmd = Command::new(self.home.join("bin/kc.sh"));
        cmd.args(["start-dev", "--import-realm", "--health-enabled=true"])
            .arg(format!("--http-port={}", self.http_port))
            .arg(format!("--http-management-port={}", self.management_port))
            .arg("--http-host=127.0.0.1")
            .env("JAVA_HOME", &java_home)
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", ADMIN.0)
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN.1)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let pid = if self.tied_to_process {
            process::spawn_tied_to_this_process(cmd, libc::SIGTERM)?
        } else {
            process::spawn_detached(cmd)?
        };
        self.pid = Some(pid);
        fs::write(self.home.join("keycloak.pid"), pid.to_string())?;
        self.wait_ready(Duration::from_secs(240))
    }

    /// Stops the server (SIGTERM, then SIGKILL after 30 s) and waits until it is gone.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(started) = &self.container {
            started.pause()?;
            return Ok(());
        }
        let pid = self.pid.take().or_else(|| read_pid(&self.home));
        if let Some(pid) = pid {
            process::terminate(pid, Duration::from_secs(30));
        }
        let _ = fs::remove_file(self.home.join("keycloak.pid"));
        Ok(())
    }

    /// Stops the dev instance living in `home`, if it runs.
    pub fn stop_persistent(home: &Path) -> bool {
        match read_pid(home) {
            Some(pid) => {
                process::terminate(pid, Duration::from_secs(30));
                let _ = fs::remove_file(home.join("keycloak.pid"));
                true
            }
            None => false,
        }
    }

    /// The HTTP port clients use.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The issuer of `realm` as seen through [`Keycloak::base_url`].
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base_url())
    }

    pub fn admin_credentials(&self) -> (&'static str, &'static str) {
        ADMIN
    }

    /// An access token from `realm`'s token endpoint for the given grant form.
    pub async fn token(&self, realm: &str, form: &[(&str, &str)]) -> anyhow::Result<String> {
        let url = format!("{}/realms/{realm}/protocol/openid-connect/token", self.base_url());
        let resp = reqwest::Client::new().post(url).form(form).send().await.context("token request failed")?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.context("token response is not JSON")?;
        match body["access_token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => bail!("token request refused ({status}): {}", body["error_description"]),
        }
    }

    /// A client_credentials token of a confidential client.
    pub async fn client_token(&self, realm: &str, client: &str, secret: &str) -> anyhow::Result<String> {
        self.token(realm, &[("grant_type", "client_credentials"), ("client_id", client), ("client_secret", secret)]).await
    }

    /// A token of the platform realm's service account (all roles).
    pub async fn service_token(&self) -> anyhow::Result<String> {
        self.client_token(REALM, SERVICE_CLIENT.0, SERVICE_CLIENT.1).await
    }

    /// A token of a dev user of the platform realm through the public client (direct grant is
    /// on in the dev realm only).
    ///
    /// One login at a time from this process: with brute-force detection on (as in the realm),
    /// Keycloak refuses a login of a user while another of the same user is under way
    /// (`user_temporarily_disabled`), and tests running side by side log in the same dev users.
    pub async fn user_token(&self, (user, password): (&str, &str)) -> anyhow::Result<String> {
        static ONE_LOGIN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_LOGIN_AT_A_TIME.lock().await;
        let form = [("grant_type", "password"), ("client_id", "patient-web"), ("username", user), ("password", password)];
        self.token(REALM, &form).await
    }

    pub fn log_file(&self) -> PathBuf {
        self.home.join("keycloak.log")
    }

    fn is_ready(&self) -> bool {
        crate::services::http_status(self.management_port, "/health/ready") == Some(200)
    }

    fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let alive = || self.pid.is_none_or(process::pid_alive);
        process::wait_ready("Keycloak", limit, &self.log_file(), alive, || self.is_ready())
    }
}

/// The extracted, dev-mode-primed distribution in the cache, prepared on first use.
///
/// `start-dev` re-augments (rebuilds) a fresh distribution on its first start, which costs about
/// 40 s; dev mode refuses `kc.sh build`, so the cached copy is primed by one start and stop, and
/// every instance copied from it starts at once.
pub fn ensure_distribution() -> anyhow::Result<PathBuf> {
    let primed = crate::paths::cache_dir().join(format!("keycloak-{VERSION}-dev"));
    if primed.join("bin/kc.sh").exists() {
        return Ok(primed);
    }
    let file = format!("keycloak-quarkus-dist-{VERSION}.tar.gz");
    let url = format!("{}/org/keycloak/keycloak-quarkus-dist/{VERSION}/{file}", download::MAVEN_CENTRAL);
    let archive = download::fetch(&url, &file)?;
    let pristine = download::extract_once(&archive, &format!("keycloak-{VERSION}"))?;

    eprintln!("dev-stack: priming Keycloak {VERSION} for dev mode (once per machine)");
    let scratch = crate::paths::cache_dir().join(format!("keycloak-{VERSION}-dev.prime-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    process::run_checked(Command::new("cp").arg("-a").arg(&pristine).arg(&scratch), "copy of the Keycloak distribution")?;
    let mut kc = Keycloak::on_free_ports(scratch.clone(), true)?;
    let started = kc.start();
    kc.stop()?;
    started?;
    for leftover in ["data", "keycloak.log", "keycloak.pid"] {
        let path = scratch.join(leftover);
        let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
    }
    if fs::rename(&scratch, &primed).is_err() {
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(primed)
}

/// A private copy of the distribution with the realm file in its import dir.
fn prepare_home(dist: &Path, home: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(home);
    if let Some(parent) = home.parent() {
        fs::create_dir_all(parent)?;
    }
    process::run_checked(Command::new("cp").arg("-a").arg(dist).arg(home), "copy of the Keycloak distribution")?;
    copy_realm(home)
}

/// The realm export a persistent Keycloak last imported (to notice a changed one).
const IMPORTED_REALM: &str = "data/imported-realm.json";

/// Whether the repository's realm export differs from the one this Keycloak imported.
fn realm_changed(home: &Path) -> bool {
    let current = fs::read(crate::paths::workspace_root().join(REALM_FILE)).ok();
    current.is_none() || fs::read(home.join(IMPORTED_REALM)).ok() != current
}

fn copy_realm(home: &Path) -> anyhow::Result<()> {
    let import = home.join("data/import");
    fs::create_dir_all(&import)?;
    let realm = crate::paths::workspace_root().join(REALM_FILE);
    fs::copy(&realm, import.join("realm-export.json")).with_context(|| format!("failed to copy {}", realm.display()))?;
    Ok(())
}

fn read_pid(home: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(home.join("keycloak.pid")).ok()?.trim().parse().ok()?;
    process::pid_alive(pid).then_some(pid)
}
