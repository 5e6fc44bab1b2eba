//! `/health/live` and `/health/ready` for every service.

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Liveness (the process answers) and readiness (its database answers).
pub fn routes(pool: PgPool) -> Router {
    Router::new()
        .route("/health/live", get(|| async { Json(json!({ "status": "UP" })) }))
        .route("/health/ready", get(ready))
        .with_state(pool)
}

async fn ready(State(pool): State<PgPool>) -> (StatusCode, Json<Value>) {
    match sqlx::query("SELECT 1").execute(&pool).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "UP", "database": "UP" }))),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "DOWN", "database": "DOWN" })))
        }
    }
}
