//! The REST API: one module per resource, plus the extractors that turn malformed requests into
//! problem responses.

mod audit;
mod extract;
pub mod openapi;
mod page;
mod patients;

use std::sync::Arc;

use axum::{middleware, Router};
use sqlx::PgPool;
use utoipa::OpenApi;
use verifier::Verifier;

use crate::billing::BillingClient;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: PgPool,
    pub billing: BillingClient,
    /// Checks every caller (SPEC §10), with the gateway's rules.
    pub verifier: Arc<Verifier>,
}

/// The API routes (health and middleware are added by `startup`). Every route checks its caller
/// and audits what it does with patient data ([`crate::audit::guard`]).
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(patients::routes())
        .merge(audit::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::audit::guard))
        // The API's description is public, like the gateway's copy of it.
        .merge(common::openapi::routes(openapi::ApiDoc::openapi()))
        .with_state(state)
}
