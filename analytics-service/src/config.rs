//! Settings of analytics-service, from flags or environment variables.

use std::net::SocketAddr;

use clap::Parser;
use common::{db::DbArgs, edge::EdgeArgs, kafka::KafkaArgs, runtime::RuntimeArgs, telemetry::LogArgs, zone::Zone};
use verifier::settings::OidcArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "analytics-service", about = "Aggregates over patient events")]
pub struct Settings {
    /// Where the HTTP API listens.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4002")]
    pub http_addr: SocketAddr,
    /// Topic of appointment events (the patient topic is `KAFKA_TOPIC`).
    #[arg(long, env = "APPOINTMENT_TOPIC", default_value = "appointment")]
    pub appointment_topic: String,
    /// Consumer group of this service.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "analytics-service")]
    pub group_id: String,
    /// The time zone whose months appointments are counted in (an IANA name, e.g.
    /// `Europe/Berlin`): set it before the first start, as counts already made keep their month.
    #[arg(long, env = "ANALYTICS_TIME_ZONE", default_value = "UTC")]
    pub analytics_time_zone: Zone,
    /// The realm whose tokens callers present.
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
    /// Body and time limits of the HTTP API.
    #[command(flatten)]
    pub edge: EdgeArgs,
}

impl Settings {
    /// Settings for tests: loopback, an OS-chosen port, the given database, broker, topic and realm.
    pub fn for_test(database_url: impl Into<String>, kafka: KafkaArgs, oidc: OidcArgs) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            // A topic of its own per test, unless the test shares one with appointment-service.
            appointment_topic: format!("appointment-{}", uuid::Uuid::new_v4().simple()),
            group_id: "analytics-service".into(),
            analytics_time_zone: Zone::default(),
            oidc,
            db: DbArgs::from_url(database_url),
            kafka,
            log: LogArgs::quiet(),
            runtime: RuntimeArgs::default(),
            edge: EdgeArgs::default(),
        }
    }
}
