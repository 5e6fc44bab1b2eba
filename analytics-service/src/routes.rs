//! `GET /analytics/summary`, for callers holding `analytics.read` (checked here as well as at
//! the gateway, SPEC §10).

use std::sync::Arc;

use axum::{extract::State, middleware, routing::get, Json, Router};
use sqlx::PgPool;
use verifier::{web::require_caller, Verifier};

use crate::{repo, Result};

pub fn router(db: PgPool, verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/analytics/summary", get(summary))
        .route_layer(middleware::from_fn_with_state(verifier, require_caller))
        .with_state(db)
}

#[tracing::instrument(skip_all)]
async fn summary(State(db): State<PgPool>) -> Result<Json<repo::Summary>> {
    Ok(Json(repo::summary(&db).await?))
}
