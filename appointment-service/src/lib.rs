//! appointment-service: appointment scheduling, CQRS.
//!
//! - Write side: commands (book, reschedule, cancel, check in, complete, no-show) on its own
//!   database, whose constraints keep the invariants (no double booking, future slots only, the
//!   transition table); every change writes an `AppointmentEvent` to the outbox, relayed to the
//!   `appointment` topic.
//! - A replica of patients from the `patient` topic: bookings for unknown or deleted patients are
//!   refused, a deleted patient's future appointments are cancelled.
//! - Read side: a projection of the `appointment` topic serves the schedules, saying how fresh it
//!   is and waiting for a client's own change when asked.

pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod projection;
pub mod replica;
pub mod repo;
pub mod routes;
pub mod startup;

pub use error::{Error, Result};

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
