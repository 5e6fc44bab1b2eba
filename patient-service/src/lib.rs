//! patient-service: patient CRUD over REST on PostgreSQL. Every caller is checked here too
//! (SPEC §10) and every access to patient data is audited (SPEC §11, [`audit`]). A create opens
//! a billing account over gRPC first, then stores the patient and its event in one transaction;
//! every change writes a `PatientEvent` to the outbox.

pub mod audit;
pub mod billing;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod idempotency;
pub mod outbox;
pub mod repo;
pub mod routes;
pub mod startup;

pub use error::{Error, Result};

/// The database role the running service acts as (created with its privileges by the
/// migrations; it cannot change or remove audit rows).
pub const RUNTIME_ROLE: &str = "patient_service_app";

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
