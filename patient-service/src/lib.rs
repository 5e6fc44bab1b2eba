//! patient-service: patient CRUD over REST on PostgreSQL. A create opens a billing account over
//! gRPC inside the same database transaction; every change writes a `PatientEvent` to the outbox.

pub mod billing;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod outbox;
pub mod relay;
pub mod repo;
pub mod routes;
pub mod startup;

pub use error::{Error, Result};

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
