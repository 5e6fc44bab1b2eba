//! The Docker backend of the test infrastructure: the same components as the local launchers
//! (same versions, same realm, same ports inside), as containers started with testcontainers.
//!
//! Chosen by [`backend`]: `TEST_INFRA=docker` selects it, anything else the local launchers.
//! Images are the official ones unless `POSTGRES_IMAGE`, `KAFKA_IMAGE` or `KEYCLOAK_IMAGE` name
//! others (the variables docker-compose.yml reads; `cargo xtask images` builds local equivalents
//! where no registry is reachable, and `cargo xtask test` sets them). Host ports are fixed per container (picked free), so a stopped and
//! restarted container keeps its address, as the local processes do. Containers of a test
//! process are removed when it exits.

// Process control and exit hooks go through libc.
#![allow(unsafe_code)]

use std::{
    path::PathBuf,
    process::Command,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context;
use testcontainers::{
    core::{ContainerPort, WaitFor},
    runners::SyncRunner,
    Container, GenericImage, ImageExt,
};

/// Where the test infrastructure runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Docker,
}

/// Docker with `TEST_INFRA=docker`, else the local launchers (the default: a running Docker
/// engine alone does not switch, so a suite never depends on images by accident).
pub fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| match std::env::var("TEST_INFRA").as_deref() {
        Ok("docker") => Backend::Docker,
        _ => Backend::Local,
    })
}

/// An image: the override variable `var` when set, else the official `default`.
fn image(var: &str, default: (&str, &str)) -> GenericImage {
    let chosen = std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    let (name, tag) = match chosen.as_deref().and_then(|v| v.rsplit_once(':').filter(|(_, tag)| !tag.contains('/'))) {
        Some((name, tag)) => (name.to_owned(), tag.to_owned()),
        None => match chosen {
            Some(name) => (name, "latest".to_owned()),
            None => (default.0.to_owned(), default.1.to_owned()),
        },
    };
    GenericImage::new(name, tag)
}

/// Official images, shared with docker-compose.yml and the local launchers' versions.
pub const POSTGRES_IMAGE: (&str, &str) = ("postgres", "15");
pub const KAFKA_IMAGE: (&str, &str) = ("apache/kafka", crate::kafka::VERSION);
pub const KEYCLOAK_IMAGE: (&str, &str) = ("quay.io/keycloak/keycloak", crate::keycloak::VERSION);

/// A started container, removed when this process exits (or when dropped).
#[derive(Debug)]
pub struct Started {
    container: Option<Container<GenericImage>>,
}

fn start(image: testcontainers::ContainerRequest<GenericImage>) -> anyhow::Result<Started> {
    let container = off_runtime(move || image.start()).context("failed to start container")?;
    remember_for_exit(container.id().to_owned());
    Ok(Started { container: Some(container) })
}

impl Started {
    fn container(&self) -> &Container<GenericImage> {
        self.container.as_ref().expect("present until dropped")
    }

    /// Stops the container (kept, with its ports, for [`Started::resume`]).
    pub fn pause(&self) -> anyhow::Result<()> {
        off_runtime(|| self.container().stop()).context("failed to stop container")
    }

    /// Starts a stopped container again and waits until its log, since this start, shows
    /// `ready` (a published port answers as soon as Docker's proxy does, before the server).
    pub fn resume(&self, ready: &str, limit: Duration) -> anyhow::Result<()> {
        let since = format!("{:.3}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64());
        off_runtime(|| self.container().start()).context("failed to start container again")?;
        let id = self.container().id().to_owned();
        let deadline = std::time::Instant::now() + limit;
        loop {
            let logs = Command::new("docker").args(["logs", "--since", &since, &id]).output()?;
            if String::from_utf8_lossy(&logs.stdout).contains(ready) || String::from_utf8_lossy(&logs.stderr).contains(ready) {
                return Ok(());
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "container {id} not ready within {limit:?} of its restart");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// testcontainers' synchronous drop blocks on a runtime of its own, which must not happen on a
/// tokio runtime thread (an async test dropping its broker): it drops on a plain thread.
impl Drop for Started {
    fn drop(&mut self) {
        if let Some(container) = self.container.take() {
            // Never a panic inside drop (a test may be unwinding already): the exit hook
            // removes whatever this leaves behind.
            let _ = std::thread::spawn(move || drop(container)).join();
        }
    }
}

/// testcontainers' blocking API runs its own runtime, which must not be entered from a tokio
/// runtime thread (the tests are async): it runs on a plain thread instead.
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(work).join().expect("container operation panicked"))
}

/// PostgreSQL listening on 127.0.0.1:`port` with superuser `postgres` / `password`.
pub fn postgres(port: u16, password: &str) -> anyhow::Result<Started> {
    let image = image("POSTGRES_IMAGE", POSTGRES_IMAGE)
        .with_wait_for(WaitFor::message_on_stderr("database system is ready to accept connections"))
        .with_wait_for(WaitFor::seconds(1))
        .with_env_var("POSTGRES_PASSWORD", password)
        .with_mapped_port(port, ContainerPort::Tcp(5432))
        .with_cmd(["postgres", "-c", "max_connections=300", "-c", "fsync=off"]);
    start(image)
}

/// A KRaft Kafka node advertising 127.0.0.1:`port` (mapped to the container's 9092).
pub fn kafka(port: u16) -> anyhow::Result<Started> {
    let image = image("KAFKA_IMAGE", KAFKA_IMAGE)
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093")
        .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@127.0.0.1:9093")
        .with_env_var("KAFKA_NUM_PARTITIONS", "3")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "3")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_mapped_port(port, ContainerPort::Tcp(9092));
    start(image)
}

/// Keycloak in dev mode with the realm file imported, HTTP on `http_port`, management (health)
/// on `management_port`.
pub fn keycloak(http_port: u16, management_port: u16, admin: (&str, &str), realm_file: PathBuf) -> anyhow::Result<Started> {
    let image = image("KEYCLOAK_IMAGE", KEYCLOAK_IMAGE)
        .with_wait_for(WaitFor::message_on_stdout("Listening on"))
        .with_env_var("KC_BOOTSTRAP_ADMIN_USERNAME", admin.0)
        .with_env_var("KC_BOOTSTRAP_ADMIN_PASSWORD", admin.1)
        .with_copy_to("/opt/keycloak/data/import/realm-export.json", realm_file)
        .with_mapped_port(http_port, ContainerPort::Tcp(8080))
        .with_mapped_port(management_port, ContainerPort::Tcp(9000))
        .with_cmd(["start-dev", "--import-realm", "--health-enabled=true", "--http-host=0.0.0.0"])
        .with_startup_timeout(Duration::from_secs(240));
    start(image)
}

/// Container ids to remove when the process exits (statics are never dropped).
fn remember_for_exit(id: String) {
    static IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static HOOK: OnceLock<()> = OnceLock::new();
    IDS.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    HOOK.get_or_init(|| {
        extern "C" fn remove_all() {
            let ids = IDS.lock().map(|ids| ids.clone()).unwrap_or_default();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(ids).output();
            }
        }
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe { libc::atexit(remove_all) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> String {
        std::fs::read_to_string(crate::paths::workspace_root().join(path)).unwrap()
    }

    /// docker compose, the chart, the containers backend and the local launchers run the same
    /// versions (each image an override whose default is the official one).
    #[test]
    fn compose_the_chart_and_the_launchers_name_the_same_versions() {
        let compose = read("docker-compose.yml");
        let chart = read("deploy/helm/patient-platform/values.yaml");
        let keycloak = format!("{}:{}", KEYCLOAK_IMAGE.0, KEYCLOAK_IMAGE.1);
        for image in [
            format!("{}:{}", POSTGRES_IMAGE.0, POSTGRES_IMAGE.1),
            format!("{}:{}", KAFKA_IMAGE.0, KAFKA_IMAGE.1),
            keycloak.clone(),
            format!("axllent/mailpit:{}", crate::mailpit::VERSION),
        ] {
            assert!(compose.contains(&format!(":-{image}}}")), "docker-compose.yml defaults to {image}");
            assert!(chart.contains(&image), "the chart's values name {image}");
        }
        assert!(read("keycloak/Dockerfile").contains(&format!("ARG KEYCLOAK_IMAGE={keycloak}")));
        let tag = crate::docker::SERVICE_IMAGE_TAG;
        assert!(compose.contains(&format!("${{SERVICE_IMAGE_TAG:-{tag}}}")), "docker-compose.yml tags the services {tag}");
        assert!(chart.contains(&format!("tag: \"{tag}\"")), "the chart runs the services' {tag}");
    }
}
