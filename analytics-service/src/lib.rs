//! analytics-service: consumes `PatientEvent`s (group `analytics-service`) into aggregates in its
//! own database, each event counted once even across crashes and redeliveries; undecodable
//! records go to the dead-letter topic; `GET /analytics/summary` serves the aggregates.

pub mod appointments;
pub mod config;
pub mod consumer;
pub mod error;
pub mod repo;
pub mod routes;
pub mod startup;

pub use error::{Error, Result};

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
