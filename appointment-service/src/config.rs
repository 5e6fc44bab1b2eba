//! Settings of appointment-service, from flags or environment variables.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use common::{
    db::DbArgs, edge::EdgeArgs, kafka::KafkaArgs, outbox::RelayArgs, runtime::RuntimeArgs, telemetry::LogArgs, zone::Zone,
};
use verifier::settings::OidcArgs;

#[derive(Debug, Clone, Parser)]
#[command(name = "appointment-service", about = "Appointment scheduling (CQRS)")]
pub struct Settings {
    /// Where the REST API listens.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4003")]
    pub http_addr: SocketAddr,
    /// Topic of appointment events (written through the outbox, read by the projection).
    #[arg(long, env = "APPOINTMENT_TOPIC", default_value = "appointment")]
    pub appointment_topic: String,
    /// Consumer group of the patient replica (on the patient topic, `KAFKA_TOPIC`).
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "appointment-service")]
    pub group_id: String,
    /// Consumer group of the schedule projection (on the appointment topic).
    #[arg(long, env = "PROJECTION_GROUP_ID", default_value = "appointment-projection")]
    pub projection_group_id: String,
    /// Longest appointment, in minutes.
    #[arg(long, env = "MAX_APPOINTMENT_MINUTES", default_value_t = 480)]
    pub max_appointment_minutes: i64,
    /// How long before its start a patient can be checked in for an appointment, in minutes
    /// (a check-in is the patient at the desk: not for an appointment days ahead).
    #[arg(long, env = "CHECK_IN_OPENS_MINUTES", default_value_t = 60)]
    pub check_in_opens_minutes: i64,
    /// The time zone whose days a schedule shows (an IANA name, e.g. `Europe/Berlin`), unless
    /// the query names another (`timeZone`).
    #[arg(long, env = "SCHEDULE_TIME_ZONE", default_value = "UTC")]
    pub schedule_time_zone: Zone,
    /// Longest a query waits for the projection to reach a client's `X-Wait-For` token.
    #[arg(long, env = "PROJECTION_WAIT_MAX_MS", default_value_t = 5_000)]
    pub projection_wait_max_ms: u64,
    /// How the outbox relay publishes.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// The realm whose tokens callers present.
    #[command(flatten)]
    pub oidc: OidcArgs,
    #[command(flatten)]
    pub db: DbArgs,
    /// The broker, and the patient topic the replica follows.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How the kernel schedules the service's threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Body and time limits of the REST API.
    #[command(flatten)]
    pub edge: EdgeArgs,
}

impl Settings {
    /// Settings for tests: loopback, an OS-chosen port, the given database, broker and realm.
    pub fn for_test(database_url: impl Into<String>, kafka: KafkaArgs, oidc: OidcArgs) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            appointment_topic: "appointment".into(),
            group_id: "appointment-service".into(),
            projection_group_id: "appointment-projection".into(),
            max_appointment_minutes: 480,
            check_in_opens_minutes: 60,
            schedule_time_zone: Zone::default(),
            projection_wait_max_ms: 5_000,
            relay: RelayArgs::eager(),
            oidc,
            db: DbArgs::from_url(database_url),
            kafka,
            log: LogArgs::quiet(),
            runtime: RuntimeArgs::default(),
            edge: EdgeArgs::default(),
        }
    }

    pub fn projection_wait_max(&self) -> Duration {
        Duration::from_millis(self.projection_wait_max_ms)
    }

    /// The same broker, on the appointment topic.
    pub fn appointment_kafka(&self) -> KafkaArgs {
        self.kafka.with_topic(&self.appointment_topic)
    }
}
