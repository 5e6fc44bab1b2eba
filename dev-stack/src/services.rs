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

/// Where pid and log files of services live, and which build of them runs.
#[derive(Debug, Clone)]
pub struct ServiceDirs {
    pub run: PathBuf,
    pub logs: PathBuf,
    /// The directory holding the service binaries (a cargo profile's output).
    pub bin: PathBuf,
}

impl ServiceDirs {
    /// Dev-profile binaries, pid and log files under `state`.
    pub fn under(state: &Path) -> Self {
        Self { run: state.join("run"), logs: state.join("logs"), bin: binary_dir("debug") }
    }

    /// The same with the binaries of cargo profile `profile` (`release` for full speed).
    pub fn with_profile(self, profile: &str) -> Self {
        Self { bin: binary_dir(profile), ..self }
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

/// The directory cargo writes binaries of `profile` (`debug`, `release`) to.
pub fn binary_dir(profile: &str) -> PathBuf {
    crate::paths::target_dir().join(profile)
}

/// Ports of the platform's services.
#[derive(Debug, Clone, Copy)]
pub struct ServicePorts {
    pub patient: u16,
    pub billing_grpc: u16,
    pub billing_http: u16,
    pub analytics: u16,
    pub appointment: u16,
    pub notification: u16,
    pub gateway: u16,
}

/// Where the services find their infrastructure.
pub struct Infrastructure<'a> {
    /// URL of a service's own database, by database name.
    pub database_url: &'a dyn Fn(&str) -> String,
    pub kafka_bootstrap: String,
    pub keycloak_port: u16,
    pub realm: &'a str,
    /// The mail server's SMTP port (loopback).
    pub smtp_port: u16,
}

/// The six services wired to each other and to `infra` (billing first: patient-service calls
/// it; the gateway last). Used by `cargo xtask up` and by the benchmark.
pub fn platform(ports: ServicePorts, infra: &Infrastructure<'_>) -> Vec<ServiceSpec> {
    let (realm, kc) = (infra.realm, infra.keycloak_port);
    // Every service trusts the same realm (SPEC §10). Clients reach Keycloak as localhost or
    // 127.0.0.1; dev mode issues tokens for whichever host was used, so both issuers are accepted.
    let env = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        all.push(("KAFKA_BOOTSTRAP_SERVERS".into(), infra.kafka_bootstrap.clone()));
        all.push(("OIDC_ISSUER_URL".into(), format!("http://localhost:{kc}/realms/{realm}")));
        all.push(("OIDC_EXTRA_ISSUERS".into(), format!("http://127.0.0.1:{kc}/realms/{realm}")));
        all.push(("OIDC_DISCOVERY_URL".into(), format!("http://127.0.0.1:{kc}/realms/{realm}")));
        all
    };
    vec![
        ServiceSpec {
            name: "billing-service",
            env: env(&[
                ("DATABASE_URL", (infra.database_url)("billing_service")),
                ("GRPC_ADDR", format!("127.0.0.1:{}", ports.billing_grpc)),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.billing_http)),
            ]),
            ready_port: ports.billing_http,
        },
        ServiceSpec {
            name: "patient-service",
            env: env(&[
                ("DATABASE_URL", (infra.database_url)("patient_service")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.patient)),
                ("BILLING_GRPC_URL", format!("http://127.0.0.1:{}", ports.billing_grpc)),
                ("SEED_DEMO_DATA", "true".into()),
                // Its own identity towards billing: the dev realm's service client.
                ("OIDC_CLIENT_ID", crate::keycloak::SERVICE_CLIENT.0.into()),
                ("OIDC_CLIENT_SECRET", crate::keycloak::SERVICE_CLIENT.1.into()),
            ]),
            ready_port: ports.patient,
        },
        ServiceSpec {
            name: "analytics-service",
            env: env(&[
                ("DATABASE_URL", (infra.database_url)("analytics_service")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.analytics)),
            ]),
            ready_port: ports.analytics,
        },
        ServiceSpec {
            name: "appointment-service",
            env: env(&[
                ("DATABASE_URL", (infra.database_url)("appointment_service")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.appointment)),
            ]),
            ready_port: ports.appointment,
        },
        ServiceSpec {
            name: "notification-service",
            env: env(&[
                ("DATABASE_URL", (infra.database_url)("notification_service")),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.notification)),
                ("SMTP_HOST", "127.0.0.1".into()),
                ("SMTP_PORT", infra.smtp_port.to_string()),
            ]),
            ready_port: ports.notification,
        },
        ServiceSpec {
            name: "gateway",
            env: env(&[
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports.gateway)),
                ("PATIENT_SERVICE_URL", format!("http://127.0.0.1:{}", ports.patient)),
                ("ANALYTICS_SERVICE_URL", format!("http://127.0.0.1:{}", ports.analytics)),
                ("APPOINTMENT_SERVICE_URL", format!("http://127.0.0.1:{}", ports.appointment)),
            ]),
            ready_port: ports.gateway,
        },
    ]
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
    let mut cmd = Command::new(dirs.bin.join(spec.name));
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let pid = process::spawn_detached(cmd).with_context(|| format!("failed to start {} (was it built?)", spec.name))?;
    fs::write(dirs.pid_file(spec.name), pid.to_string())?;
    Ok(pid)
}

/// Starts the service for a test: tied to the test process (it receives SIGTERM when the test
/// binary exits, even by a crash), pid and log files in `dirs`; returns its pid.
pub fn start_for_test(spec: &ServiceSpec, dirs: &ServiceDirs) -> anyhow::Result<u32> {
    start_tied(spec, dirs, process::spawn_tied_to_this_process)
}

/// Starts the service as [`start`] runs it (in a session of its own, so scheduled as its own
/// group), but tied to this process as [`start_for_test`] is: for the benchmark, whose
/// figures depend on how the kernel shares the cores, and which must not leave services
/// running when it is interrupted.
pub fn start_tied_in_own_session(spec: &ServiceSpec, dirs: &ServiceDirs) -> anyhow::Result<u32> {
    start_tied(spec, dirs, process::spawn_tied_in_own_session)
}

fn start_tied(
    spec: &ServiceSpec,
    dirs: &ServiceDirs,
    spawn: fn(Command, libc::c_int) -> anyhow::Result<u32>,
) -> anyhow::Result<u32> {
    fs::create_dir_all(&dirs.run)?;
    fs::create_dir_all(&dirs.logs)?;
    let log = fs::File::options().create(true).append(true).open(dirs.log_file(spec.name))?;
    let mut cmd = Command::new(dirs.bin.join(spec.name));
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let pid = spawn(cmd, libc::SIGTERM).with_context(|| format!("failed to start {} from {}", spec.name, dirs.bin.display()))?;
    fs::write(dirs.pid_file(spec.name), pid.to_string())?;
    Ok(pid)
}

/// SIGKILL: the service dies where it stands. True when something was killed.
pub fn kill(name: &str, dirs: &ServiceDirs) -> bool {
    let pid = dirs.running_pid(name);
    if let Some(pid) = pid {
        process::kill(pid);
    }
    let _ = fs::remove_file(dirs.pid_file(name));
    pid.is_some()
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
