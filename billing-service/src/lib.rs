//! billing-service: billing accounts over gRPC (`BillingService`, no proto package), stored in
//! PostgreSQL, with gRPC server reflection and health; HTTP health on a second port. Accounts open
//! PENDING and follow the `patient` topic: ACTIVE once the patient's event arrives, VOIDED when it
//! never does within a window, CLOSED when the patient is deleted.

pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod pending;
pub mod repo;
pub mod startup;

pub use error::{Error, Result};

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
