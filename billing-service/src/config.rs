//! Settings of billing-service, from flags or environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use common::{db::DbArgs, edge::EdgeArgs, kafka::KafkaArgs, runtime::RuntimeArgs, telemetry::LogArgs};
use verifier::settings::OidcArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "billing-service", about = "Billing accounts over gRPC")]
pub struct Settings {
    /// Where the gRPC API (BillingService, reflection, health) listens.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:9001")]
    pub grpc_addr: SocketAddr,
    /// Where the HTTP health endpoints listen.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4001")]
    pub http_addr: SocketAddr,
    /// Consumer group of this service on the patient topic.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "billing-service")]
    pub group_id: String,
    /// Seconds an account may stay PENDING (its patient not yet seen on the patient topic) before
    /// it is voided and its name and email scrubbed. Longer than any normal create-to-event delay;
    /// a patient whose event comes later still gets its account back.
    #[arg(long, env = "PENDING_ACCOUNT_WINDOW_SECS", default_value_t = 600.0)]
    pub pending_account_window_secs: f64,
    /// The realm whose tokens callers present (every RPC but health and reflection).
    #[command(flatten)]
    pub oidc: OidcArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How the kernel schedules the service's threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Limits of the HTTP port (health and metrics only).
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Limits of the gRPC port.
    #[command(flatten)]
    pub grpc: GrpcLimits,
}

/// How long a call, and a connection, may last on the gRPC port: nothing a client does (or
/// fails to do) holds a call or a connection for ever.
#[derive(Debug, Clone, Parser)]
pub struct GrpcLimits {
    /// The most a call may take, its request message included; a call still running then ends
    /// with CANCELLED. (Callers' own deadlines, `grpc-timeout`, are shorter.)
    #[arg(long, env = "GRPC_CALL_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_call_timeout_ms: u64,
    /// A connection this old is asked to close (GOAWAY): its calls finish and the client
    /// reconnects, possibly to another replica. One that never started HTTP/2 is closed then.
    #[arg(long, env = "GRPC_MAX_CONNECTION_AGE_MS", default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub grpc_max_connection_age_ms: u64,
    /// How long the calls of a connection asked to close may still run before it is cut.
    #[arg(long, env = "GRPC_MAX_CONNECTION_AGE_GRACE_MS", default_value_t = 30_000)]
    pub grpc_max_connection_age_grace_ms: u64,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self::parse_from(["grpc"])
    }
}

impl GrpcLimits {
    /// A server builder with these limits, and keepalive pings that find a peer gone silent.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .timeout(Duration::from_millis(self.grpc_call_timeout_ms))
            .max_connection_age(Duration::from_millis(self.grpc_max_connection_age_ms))
            .max_connection_age_grace(Duration::from_millis(self.grpc_max_connection_age_grace_ms))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .tcp_keepalive(Some(KEEPALIVE_INTERVAL))
    }
}

/// A connection quiet this long is pinged; one that does not answer within
/// [`KEEPALIVE_TIMEOUT`] is closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl Settings {
    /// Settings for tests and tools: loopback, OS-chosen ports, the given database and realm.
    pub fn for_database(database_url: impl Into<String>, oidc: OidcArgs) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            group_id: "billing-service".into(),
            pending_account_window_secs: 600.0,
            oidc,
            db: DbArgs::from_url(database_url),
            kafka: KafkaArgs::disabled(),
            log: LogArgs::quiet(),
            runtime: RuntimeArgs::default(),
            edge: EdgeArgs::default(),
            grpc: GrpcLimits::default(),
        }
    }

    /// [`Self::pending_account_window_secs`] as a duration (a negative or NaN value counts as 0).
    pub fn pending_account_window(&self) -> Duration {
        Duration::try_from_secs_f64(self.pending_account_window_secs).unwrap_or(Duration::ZERO)
    }
}
