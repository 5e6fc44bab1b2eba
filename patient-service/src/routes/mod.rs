//! The REST API: one module per resource, plus the extractors that turn malformed requests into
//! problem responses.

mod extract;
mod page;
mod patients;

use axum::{extract::DefaultBodyLimit, Router};
use sqlx::PgPool;

use crate::billing::BillingClient;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub billing: BillingClient,
}

/// The API routes (health and middleware are added by `startup`).
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new().merge(patients::routes()).layer(DefaultBodyLimit::max(max_body_bytes)).with_state(state)
}
