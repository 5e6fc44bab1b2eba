//! gateway: the platform's single entry point. Verifies Keycloak-issued RS256 access tokens
//! against a cached JWKS, enforces the per-route role table (the `verifier` crate's, which the
//! services apply again), strips `/api` and proxies to the services. A rejected request never
//! reaches a backend.

pub mod config;
pub mod cors;
pub mod docs;
pub mod error;
pub mod forwarded;
pub mod limit;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod startup;
pub mod threads;

pub use error::{Error, Result};
