//! Settings of notification-service, from flags or environment variables.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};
use common::{
    db::DbArgs, edge::EdgeArgs, kafka::KafkaArgs, runtime::RuntimeArgs, secret::Secret, telemetry::LogArgs, zone::Zone,
};

#[derive(Debug, Clone, Parser)]
#[command(name = "notification-service", about = "Mails patients about their registration and appointments")]
pub struct Settings {
    /// Where health, readiness and metrics are served.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4005")]
    pub http_addr: SocketAddr,
    /// Topic of appointment events (the patient topic is `KAFKA_TOPIC`).
    #[arg(long, env = "APPOINTMENT_TOPIC", default_value = "appointment")]
    pub appointment_topic: String,
    /// Consumer group on both topics.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "notification-service")]
    pub group_id: String,
    /// How long before an appointment its reminder is sent.
    #[arg(long, env = "REMINDER_BEFORE_SECS", default_value_t = 86_400)]
    pub reminder_before_secs: u64,
    /// On the service's first start, how far back events still get mails. Older ones (a new
    /// consumer group replays the topics' history) update contacts and reminders but must not
    /// greet every patient ever registered. Fixed at that first start: later events are mailed
    /// however late they are consumed.
    #[arg(long, env = "MAIL_BACKFILL_SECS", default_value_t = 86_400)]
    pub mail_backfill_secs: u64,
    /// The time zone of the appointment times in mails (an IANA name, e.g. `Europe/Berlin`):
    /// the clinic's clock, which patients go by.
    #[arg(long, env = "MAIL_TIME_ZONE", default_value = "UTC")]
    pub mail_time_zone: Zone,
    /// A directory whose `<kind>.txt` / `<kind>.html` files replace the built-in templates.
    #[arg(long, env = "TEMPLATES_DIR")]
    pub templates_dir: Option<PathBuf>,
    #[command(flatten)]
    pub smtp: SmtpArgs,
    #[command(flatten)]
    pub sender: SenderArgs,
    #[command(flatten)]
    pub db: DbArgs,
    /// The broker, and the patient topic.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// How the kernel schedules the service's threads.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// The mail server.
#[derive(Debug, Clone, Args)]
pub struct SmtpArgs {
    #[arg(long, env = "SMTP_HOST", default_value = "127.0.0.1")]
    pub smtp_host: String,
    #[arg(long, env = "SMTP_PORT", default_value_t = 1025)]
    pub smtp_port: u16,
    /// Require STARTTLS (production relays); off for a local mail server.
    #[arg(long, env = "SMTP_STARTTLS", default_value_t = false)]
    pub smtp_starttls: bool,
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<Secret>,
    /// Bound of one whole SMTP conversation (connect to the server's last reply).
    #[arg(long, env = "SMTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub smtp_timeout_ms: u64,
    /// The sender of every mail.
    #[arg(long, env = "MAIL_FROM", default_value = "Patient platform <no-reply@patient-platform.local>")]
    pub mail_from: String,
}

/// How the queue of mails is worked off.
#[derive(Debug, Clone, Args)]
pub struct SenderArgs {
    /// How often the sender looks for due mails when idle.
    #[arg(long, env = "SENDER_POLL_MS", default_value_t = 500)]
    pub sender_poll_ms: u64,
    /// Mails claimed per round.
    #[arg(long, env = "SENDER_BATCH", default_value_t = 20)]
    pub sender_batch: i64,
    /// First retry delay after a failed send; doubles per attempt up to `SENDER_RETRY_MAX_MS`.
    #[arg(long, env = "SENDER_RETRY_MS", default_value_t = 1_000)]
    pub sender_retry_ms: u64,
    #[arg(long, env = "SENDER_RETRY_MAX_MS", default_value_t = 60_000)]
    pub sender_retry_max_ms: u64,
    /// How long a claimed mail is held by its sender before another may take it over (a sender
    /// that died mid-send).
    #[arg(long, env = "SENDER_LEASE_MS", default_value_t = 60_000)]
    pub sender_lease_ms: u64,
    /// How long a mail waits for its patient's contact details (an appointment event can arrive
    /// before the patient's) before it is given up.
    #[arg(long, env = "CONTACT_WAIT_SECS", default_value_t = 3_600)]
    pub contact_wait_secs: u64,
}

impl SenderArgs {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.sender_poll_ms)
    }
}

impl Settings {
    /// Settings for tests: loopback, an OS-chosen port, the given database, broker, mail server.
    pub fn for_test(database_url: impl Into<String>, kafka: KafkaArgs, smtp_port: u16) -> Self {
        let mut settings = Self::parse_from(["notification-service", "--database-url", "postgres://set-below"]);
        settings.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.db = DbArgs::from_url(database_url);
        settings.kafka = kafka;
        settings.smtp.smtp_port = smtp_port;
        settings.sender.sender_poll_ms = 100;
        settings.sender.sender_retry_ms = 200;
        settings.sender.sender_retry_max_ms = 2_000;
        settings.log = LogArgs::quiet();
        settings
    }

    pub fn mail_backfill(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.mail_backfill_secs).unwrap_or(i64::MAX / 2))
    }

    pub fn reminder_before(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.reminder_before_secs).unwrap_or(i64::MAX / 2))
    }
}
