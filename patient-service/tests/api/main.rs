//! patient-service through its REST interface, with a real billing-service over gRPC and a real
//! PostgreSQL (one fresh database per service per test).

mod auth;
mod create;
mod crud;
mod helpers;
mod idempotency;
mod list;
mod migrations;
mod resilience;
mod settings;
