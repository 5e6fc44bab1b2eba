//! Settings of patient-service, from flags or environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use common::{db::DbArgs, edge::EdgeArgs, kafka::KafkaArgs, outbox::RelayArgs, runtime::RuntimeArgs, telemetry::LogArgs};
use verifier::{client::ClientArgs, settings::OidcArgs};

#[derive(Debug, Clone, Parser)]
#[command(name = "patient-service", about = "Patient CRUD over REST")]
pub struct Settings {
    /// Where the REST API listens.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4000")]
    pub http_addr: SocketAddr,
    /// gRPC endpoint of billing-service.
    #[arg(long, env = "BILLING_GRPC_URL", default_value = "http://127.0.0.1:9001")]
    pub billing_grpc_url: String,
    /// Deadline of one billing call; a create answers 503 when it passes.
    #[arg(long, env = "BILLING_TIMEOUT_MS", default_value_t = 3_000)]
    pub billing_timeout_ms: u64,
    /// How long to wait for a TCP connection to billing.
    #[arg(long, env = "BILLING_CONNECT_TIMEOUT_MS", default_value_t = 1_000)]
    pub billing_connect_timeout_ms: u64,
    /// Retries and the circuit breaker around billing calls.
    #[command(flatten)]
    pub billing_resilience: Resilience,
    /// Body and time limits of the REST API.
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// How often keys past their 24 hours, and the 201 bodies (personal data) they would replay,
    /// are deleted (a request with an expired key deletes that one key at once).
    #[arg(long, env = "IDEMPOTENCY_SWEEP_SECS", default_value_t = 600)]
    pub idempotency_sweep_secs: u64,
    /// Insert the 15 well-known demo patients at start (skips those already present).
    #[arg(long, env = "SEED_DEMO_DATA", default_value_t = false)]
    pub seed_demo_data: bool,
    /// How the outbox relay publishes.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// The realm whose tokens callers present.
    #[command(flatten)]
    pub oidc: OidcArgs,
    /// This service's own client, for its calls to billing.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How the kernel schedules the service's threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How calls to billing survive its hiccups and how they stop hammering it when it is down.
#[derive(Debug, Clone, Parser)]
pub struct Resilience {
    /// Attempts per billing call (both RPCs are idempotent), all within the call's deadline;
    /// only transient failures (unreachable, overloaded) are retried.
    #[arg(long, env = "BILLING_RETRY_ATTEMPTS", default_value_t = 3)]
    pub billing_retry_attempts: u32,
    /// First retry backoff; it doubles per attempt, each sleep a random fraction of it (full jitter).
    #[arg(long, env = "BILLING_RETRY_BACKOFF_MS", default_value_t = 50)]
    pub billing_retry_backoff_ms: u64,
    /// Consecutive failed attempts that open the circuit: calls then answer 503 at once.
    #[arg(long, env = "BILLING_BREAKER_FAILURES", default_value_t = 5)]
    pub billing_breaker_failures: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[arg(long, env = "BILLING_BREAKER_OPEN_MS", default_value_t = 5_000)]
    pub billing_breaker_open_ms: u64,
}

impl Settings {
    /// Settings for tests and tools: loopback, an OS-chosen port, the given database, billing and
    /// realm.
    pub fn for_database(
        database_url: impl Into<String>,
        billing_grpc_url: impl Into<String>,
        oidc: OidcArgs,
        client: ClientArgs,
    ) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            billing_grpc_url: billing_grpc_url.into(),
            billing_timeout_ms: 3_000,
            billing_connect_timeout_ms: 1_000,
            billing_resilience: Resilience::parse_from(["patient-service"]),
            edge: EdgeArgs::default(),
            seed_demo_data: false,
            idempotency_sweep_secs: 600,
            relay: RelayArgs::eager(),
            oidc,
            client,
            db: DbArgs::from_url(database_url),
            kafka: KafkaArgs::disabled(),
            log: LogArgs::quiet(),
            runtime: RuntimeArgs::default(),
        }
    }

    pub fn billing_timeout(&self) -> Duration {
        Duration::from_millis(self.billing_timeout_ms)
    }

    pub fn billing_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.billing_connect_timeout_ms)
    }
}
