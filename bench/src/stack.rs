//! The platform as release processes on free ports, on infrastructure the dev-stack launchers
//! start for this run only.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context;
use dev_stack::{
    kafka::Kafka,
    keycloak::Keycloak,
    net::free_port,
    services::{self, Infrastructure, ServiceDirs, ServicePorts, ServiceSpec},
    PgCluster,
};

pub const REALM: &str = "patient-management";

/// The services' databases.
const SERVICE_DATABASES: [&str; 4] = ["patient_service", "billing_service", "analytics_service", "appointment_service"];

pub struct Stack {
    pub pg: PgCluster,
    pub kafka: Kafka,
    pub keycloak: Keycloak,
    pub ports: ServicePorts,
    pub dirs: ServiceDirs,
    /// Pid of each running service, by name.
    pub pids: BTreeMap<String, u32>,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        println!("==> infrastructure: PostgreSQL, Kafka, Keycloak (free ports, private dirs)");
        let pg = PgCluster::start_ephemeral()?;
        for db in SERVICE_DATABASES.iter().chain(&["relay_bench"]) {
            pg.ensure_database(db).await?;
        }
        let kafka = Kafka::start_ephemeral()?;
        let keycloak = Keycloak::start_ephemeral()?;
        let ports = ServicePorts {
            patient: free_port()?,
            billing_grpc: free_port()?,
            billing_http: free_port()?,
            analytics: free_port()?,
            appointment: free_port()?,
            notification: free_port()?,
            gateway: free_port()?,
        };
        let state: PathBuf = std::env::temp_dir().join(format!("patient-platform-bench-{}", std::process::id()));
        let dirs = ServiceDirs::under(&state).with_profile("release");
        let mut stack = Self { pg, kafka, keycloak, ports, dirs, pids: BTreeMap::new() };
        for spec in stack.specs() {
            stack.launch(&spec)?;
        }
        Ok(stack)
    }

    /// The platform's services as the bench runs them.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        let database_url = |db: &str| self.pg.url(db);
        let infra = Infrastructure {
            database_url: &database_url,
            kafka_bootstrap: self.kafka.bootstrap_servers(),
            keycloak_port: self.keycloak.base_url().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default(),
            realm: REALM,
            // No mail server: the scheduling services are not started (below).
            smtp_port: self.ports.notification,
        };
        let mut specs = services::platform(self.ports, &infra);
        // The bench measures the patient path; appointment- and notification-service would only
        // add consumers of the same topic (and comparisons with earlier runs would be lost).
        specs.retain(|s| !matches!(s.name, "appointment-service" | "notification-service"));
        // The limiter stays on the measured path, with room for any load the bench offers.
        if let Some(gateway) = specs.iter_mut().find(|s| s.name == "gateway") {
            gateway.env.push(("RATE_LIMITS".into(), "default=10000000:10000000".into()));
        }
        specs
    }

    /// Starts one service process and waits until it is ready. It runs in a session of its
    /// own, as `cargo xtask up` runs it (each service then gets its own share of the cores, as
    /// in its own container), and it is tied to the bench: it gets SIGTERM when the bench ends,
    /// even interrupted or killed, so nothing is left running.
    pub fn launch(&mut self, spec: &ServiceSpec) -> anyhow::Result<u32> {
        let pid = services::start_tied_in_own_session(spec, &self.dirs)?;
        services::wait_ready(spec, &self.dirs, Duration::from_secs(60))?;
        self.pids.insert(spec.name.to_owned(), pid);
        Ok(pid)
    }

    /// A second gateway, in front of another backend (the static one).
    pub fn launch_gateway_for(&mut self, name: &'static str, backend: &str) -> anyhow::Result<u16> {
        let mut spec = self.specs().into_iter().find(|s| s.name == "gateway").context("gateway spec")?;
        let port = free_port()?;
        for (key, value) in spec.env.iter_mut() {
            match key.as_str() {
                "HTTP_ADDR" => *value = format!("127.0.0.1:{port}"),
                "PATIENT_SERVICE_URL" => *value = backend.to_owned(),
                _ => {}
            }
        }
        spec.ready_port = port;
        // Same binary, its own pid and log file.
        let link = self.dirs.bin.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(self.dirs.bin.join("gateway"), &link)?;
        }
        spec.name = name;
        self.launch(&spec)?;
        Ok(port)
    }

    /// Refreshes the planner's statistics of every service database, as autovacuum does within
    /// about a minute of the growth the warm-up round causes. Until then the services' prepared
    /// statements keep the plans made for the nearly empty tables of a fresh stack (whole-table
    /// scans, e.g. of every patient for the email check), a state a running system leaves in its
    /// first minute; ANALYZE invalidates those plans.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        for db in SERVICE_DATABASES {
            let pool = sqlx::PgPool::connect(&self.pg.url(db)).await?;
            sqlx::query("ANALYZE").execute(&pool).await.with_context(|| format!("ANALYZE of {db} failed"))?;
            pool.close().await;
        }
        Ok(())
    }

    pub async fn token(&self) -> anyhow::Result<String> {
        self.keycloak.client_token(REALM, "ms-api", "ms-api-dev-secret").await
    }

    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn stop(&mut self) {
        for name in std::mem::take(&mut self.pids).keys() {
            services::stop(name, &self.dirs, Duration::from_secs(10));
        }
    }
}

/// An error or panic anywhere in the run stops the services at once, each given time to finish.
impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(VmRSS, VmHWM)` of a process in MiB: resident now, and the peak since it started.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
