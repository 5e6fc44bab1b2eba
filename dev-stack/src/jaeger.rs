//! Jaeger v2 (the OpenTelemetry-collector based all-in-one: OTLP in, traces in memory, the query
//! API and UI out), built once from its Go module at a pinned version into the cache, run on
//! free ports with a config of our own.

use std::{fs, path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use crate::{net, process};

/// The pinned Go module version of `github.com/jaegertracing/jaeger` (its `cmd/jaeger` is the
/// v2 backend); builds in about 5 minutes on 2 cores.
pub const VERSION: &str = "v1.76.0";
/// The Jaeger v2 release (and official image tag) of that module version.
pub const IMAGE_VERSION: &str = "2.13.0";
const TEST_DIR_PREFIX: &str = "patient-platform-test-jaeger-";

/// A running Jaeger: where spans go (OTLP/HTTP) and where they are read (query API and UI).
#[derive(Debug)]
pub struct Jaeger {
    otlp_port: u16,
    query_port: u16,
    /// The query API's gRPC side (unused here, but it always listens).
    query_grpc_port: u16,
}

impl Jaeger {
    /// One Jaeger per test process, started on first use.
    pub fn shared_for_tests() -> &'static Jaeger {
        static JAEGER: OnceLock<Jaeger> = OnceLock::new();
        JAEGER.get_or_init(|| Self::start_ephemeral().unwrap_or_else(|e| panic!("failed to start the test Jaeger: {e:#}")))
    }

    /// A private Jaeger on free ports, tied to this process' lifetime.
    pub fn start_ephemeral() -> anyhow::Result<Self> {
        let dir = process::fresh_test_dir(TEST_DIR_PREFIX);
        let jaeger = Self { otlp_port: net::free_port()?, query_port: net::free_port()?, query_grpc_port: net::free_port()? };
        let cmd = jaeger.command(&dir)?;
        let pid = process::spawn_tied_to_this_process(cmd, libc::SIGKILL)?;
        jaeger.wait_ready(&dir, pid)?;
        Ok(jaeger)
    }

    /// The dev stack's Jaeger, detached, its files and pid in `dir`; reused when it runs.
    pub fn start_persistent(dir: &std::path::Path, otlp_port: u16, query_port: u16) -> anyhow::Result<Self> {
        // The dev stack's query gRPC port sits next to the UI's (16686 → 16685, Jaeger's default).
        let jaeger = Self { otlp_port, query_port, query_grpc_port: query_port.saturating_sub(1) };
        if read_pid(dir).is_some() {
            return Ok(jaeger);
        }
        let pid = process::spawn_detached(jaeger.command(dir)?)?;
        fs::write(dir.join("jaeger.pid"), pid.to_string())?;
        jaeger.wait_ready(dir, pid)?;
        Ok(jaeger)
    }

    /// Stops the dev stack's Jaeger; whether one was running.
    pub fn stop_persistent(dir: &std::path::Path) -> bool {
        let Some(pid) = read_pid(dir) else { return false };
        process::terminate(pid, Duration::from_secs(10));
        let _ = fs::remove_file(dir.join("jaeger.pid"));
        true
    }

    /// Where services send spans: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_port)
    }

    /// The UI, and under `/api` the query API (`/api/traces/{trace id}`).
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query_port)
    }

    fn command(&self, dir: &std::path::Path) -> anyhow::Result<Command> {
        let bin = ensure()?;
        fs::create_dir_all(dir)?;
        let config = dir.join("jaeger.yaml");
        fs::write(&config, self.config())?;
        let log = fs::File::create(dir.join("jaeger.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config=file:{}", config.display()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    fn wait_ready(&self, dir: &std::path::Path, pid: u32) -> anyhow::Result<()> {
        let up =
            || crate::services::http_status(self.query_port, "/api/services") == Some(200) && net::port_in_use(self.otlp_port);
        process::wait_ready("Jaeger", Duration::from_secs(60), &dir.join("jaeger.log"), || process::pid_alive(pid), up)
    }

    /// OTLP/HTTP in, memory storage, the query API and UI out; nothing else listens.
    fn config(&self) -> String {
        format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_query:
    storage:
      traces: memory_store
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memory_store:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory_store
"#,
            query = self.query_port,
            query_grpc = self.query_grpc_port,
            otlp = self.otlp_port
        )
    }
}

fn read_pid(dir: &std::path::Path) -> Option<u32> {
    let pid = fs::read_to_string(dir.join("jaeger.pid")).ok()?.trim().parse().ok()?;
    process::pid_alive(pid).then_some(pid)
}

/// Path of the jaeger binary, built on first use (see [`crate::go::build`]).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let package = "github.com/jaegertracing/jaeger/cmd/jaeger";
    crate::go::build("jaeger", package, VERSION, "about 5 minutes")
}
