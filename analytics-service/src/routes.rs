//! `GET /analytics/summary`, for callers holding `analytics.read` (checked here as well as at
//! the gateway, SPEC §10).

use std::sync::Arc;

use axum::{extract::State, middleware, routing::get, Json, Router};
use common::openapi::Shared;
use sqlx::PgPool;
use utoipa::OpenApi;
use verifier::{web::require_caller, Verifier};

use crate::{repo, Result};

pub fn router(db: PgPool, verifier: Arc<Verifier>) -> Router {
    Router::new()
        .route("/analytics/summary", get(summary))
        .route_layer(middleware::from_fn_with_state(verifier, require_caller))
        // The API's description is public, like the gateway's copy of it.
        .merge(common::openapi::routes(ApiDoc::openapi()))
        .with_state(db)
}

/// The OpenAPI 3.1 description of analytics-service, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "analytics-service", description = "Aggregates of the patient events."),
    paths(summary),
    modifiers(&Shared),
    tags((name = "analytics", description = "Aggregates of patient events"))
)]
pub struct ApiDoc;

/// Patients created, updated, deleted and active; registrations per month; age bands;
/// appointments booked, cancelled and not attended per month.
#[utoipa::path(get, path = "/analytics/summary", tag = "analytics",
    responses((status = 200, description = "The aggregates", body = repo::Summary)))]
#[tracing::instrument(skip_all)]
async fn summary(State(db): State<PgPool>) -> Result<Json<repo::Summary>> {
    Ok(Json(repo::summary(&db).await?))
}
