//! `GET /analytics/summary`.

use axum::{extract::State, routing::get, Json, Router};
use sqlx::PgPool;

use crate::{repo, Result};

pub fn router(db: PgPool) -> Router {
    Router::new().route("/analytics/summary", get(summary)).with_state(db)
}

#[tracing::instrument(skip_all)]
async fn summary(State(db): State<PgPool>) -> Result<Json<repo::Summary>> {
    Ok(Json(repo::summary(&db).await?))
}
