//! notification-service: mails patients about their registration and their appointments.
//!
//! A consumer of the `patient` and `appointment` topics (group `notification-service`) records
//! every mail an event calls for, and each appointment's reminder, in a durable queue in its own
//! database; a sender works that queue over real SMTP (record-then-send: exactly one mail per
//! event across crashes and redeliveries, retries while the mail server is down). Templates are
//! files (plain text + HTML). Logs and metrics never carry names, emails or addresses.

pub mod config;
pub mod consumer;
pub mod mails;
pub mod sender;
pub mod startup;
pub mod templates;

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
