//! billing-service: billing accounts over gRPC (`BillingService`, no proto package), stored in
//! PostgreSQL, with gRPC server reflection and health; HTTP health on a second port; closes the
//! account of a deleted patient from the `patient` topic.

pub mod config;
pub mod consumer;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod repo;
pub mod startup;

pub use error::{Error, Result};

/// The embedded migrations of this service's database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
